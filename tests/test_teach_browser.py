"""The console's teach flow in headless Chromium against a real uvicorn (tiny model, transformers
engine, real training in a child process): upload examples, watch the job, read the held-out
comparison, choose what serves, see the engine and confidence of an answer. Screenshots go to
``test-artifacts/console/teach-*.png``."""

from __future__ import annotations

import json

import pytest

from .test_console_browser import ADMIN, By, browser, go, live, shot, visible, wait  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]
JOB_TIMEOUT = 600  # the tiny model trains in well under a minute; a busy 2-core host may queue it


def sign_in(driver, base: str) -> None:
    driver.get(base + "/console/")
    key = visible(driver, "#api-key")
    key.send_keys(ADMIN)
    driver.find_element(By.ID, "signin-btn").click()
    visible(driver, "#task-sentiment")


def test_teach_a_task_in_the_console(live, browser, tmp_path):  # noqa: F811 - pytest fixtures
    from domain_lm.data import embedded

    base, _ = live
    rows = embedded.records("twitter_fin_sentiment/sentiment")[::9][:120]
    good = tmp_path / "tweets.jsonl"
    good.write_text("\n".join(json.dumps({"tweet": r["text"], "label": r["label"]}) for r in rows))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps({"tweet": f"row {i}", "label": "sideways"}) for i in range(30)))

    sign_in(browser, base)
    card = browser.find_element(By.ID, "task-sentiment")
    assert "Served by the base model" in card.text and "no uploaded examples" in card.text
    browser.find_element(By.ID, "teach-sentiment").click()
    visible(browser, "#upload-form")
    assert "no uploaded examples yet" in browser.find_element(By.ID, "serving-why").text

    # A file whose rows do not fit: refused at once, the rows named, nothing queued.
    browser.find_element(By.ID, "examples-file").send_keys(str(bad))
    browser.find_element(By.ID, "fields-map").send_keys('{"text": "tweet"}')
    browser.find_element(By.ID, "upload-btn").click()
    problems = visible(browser, "#upload-problems")
    assert "row 1" in problems.text and "sideways" in problems.text
    shot(browser, "teach-01-refused")

    # Real examples: the job trains, loads the adapter and compares the four systems.
    browser.find_element(By.ID, "examples-file").send_keys(str(good))
    browser.find_element(By.ID, "label-map").send_keys('{"bearish": "negative", "bullish": "positive"}')
    browser.find_element(By.ID, "upload-btn").click()
    visible(browser, "#job")
    wait(browser, lambda d: d.find_element(By.ID, "job").get_attribute("data-state") in ("succeeded", "failed"), JOB_TIMEOUT)
    assert browser.find_element(By.ID, "job").get_attribute("data-state") == "succeeded", browser.find_element(By.ID, "job").text
    table = visible(browser, "#comparison-1")
    systems = {r.get_attribute("data-system") for r in table.find_elements(By.CSS_SELECTOR, "tr[data-system]")}
    assert systems == {"zero_shot", "few_shot", "adapter", "classical"}
    assert table.find_elements(By.CSS_SELECTOR, "tr.selected")  # the system that serves is marked
    assert "engine: auto" in browser.find_element(By.ID, "serving-why").text
    shot(browser, "teach-02-compared")

    # Choose what serves: the adapter, registered as the next template version.
    browser.find_element(By.ID, "serve-adapter").click()
    wait(browser, lambda d: "registered" in d.find_element(By.ID, "serve-result").text)
    assert "sentiment@1" in browser.find_element(By.ID, "serving").text
    shot(browser, "teach-03-adapter-serves")

    # An answer says which engine produced it, and how sure it is.
    go(browser, base, "/try/sentiment")
    visible(browser, "#in-text").send_keys("Shares plunged after the lender missed estimates.")
    browser.find_element(By.ID, "run-btn").click()
    assert visible(browser, "#result-engine").text == "llm"
    assert "%" in browser.find_element(By.ID, "result-confidence").text
    assert "sentiment@1" in browser.find_element(By.ID, "result").text
    shot(browser, "teach-04-answer")
