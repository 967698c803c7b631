"""End to end: headless Chromium (Selenium + Debian's chromedriver) against the console served by a
real uvicorn on 127.0.0.1, with the tiny model on the transformers engine.

Screenshots of every step land in ``test-artifacts/console/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.request

import pytest

from services.security import hash_key

from .conftest import REPO
from .test_console import NEW_TASK, make_runs_dir

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DOMAIN_LM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DOMAIN_LM_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts" / "console"
ADMIN = "browser-admin-key"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1100",
]
TIMEOUT = 60  # seconds for one page step on a busy 2-core machine (the tiny model answers in well under that)

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(
        f"chromium/chromedriver not installed ({CHROMIUM}, {CHROMEDRIVER}); apt-get install chromium chromium-driver",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = ADMIN) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir):
    """The service (HF engine, tiny model) on a free port; yields (base_url, templates_dir)."""
    import uvicorn

    from services.app import create_app
    from services.settings import ServiceSettings

    root = tmp_path_factory.mktemp("console-live")
    templates = root / "task_templates"
    shutil.copytree(REPO / "task_templates", templates)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOMAIN_LM_RUNS_DIR", str(make_runs_dir(root / "runs")))
        settings = ServiceSettings(
            model=str(tiny_model_dir),
            model_name="tiny-bank-lm",
            engine="hf",
            api_keys=f"ops:{hash_key(ADMIN)}:*:admin",
            templates_dir=str(templates),
            template_reload_interval_s=0,
        )
        app = create_app(settings)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline and (not server.started or _get(base + "/readyz", None)[0] != 200):
            time.sleep(0.2)
        status, body = _get(base + "/readyz", None)
        assert status == 200, f"the service did not become ready: {body}"
        yield base, templates
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(TIMEOUT)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    # Full-page: grow the window to the document height for the screenshot.
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(1440, max(900, min(int(height) + 40, 4000)))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1440, 1100)


def wait(driver, cond, timeout: float = TIMEOUT):
    # The console re-renders lists while a condition reads them: a stale element means "poll again".
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(cond)


def visible(driver, css: str, timeout: float = TIMEOUT):
    return wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, css)), timeout)


def set_editor(driver, text: str) -> None:
    """Replace the YAML (typing thousands of characters through WebDriver is slow) and fire `input`."""
    driver.execute_script(
        "const t = document.getElementById('yaml-editor'); t.value = arguments[0]; t.dispatchEvent(new Event('input'));", text
    )


def go(driver, base: str, hash_: str) -> None:
    driver.get(f"{base}/console/#{hash_}")


# --------------------------------------------------------------------------- the flow


def test_sign_in_and_list_tasks(live, browser):
    base, _ = live
    browser.get(base + "/console")  # redirected to /console/
    key = visible(browser, "#api-key")
    key.send_keys("not-a-key")
    browser.find_element(By.ID, "signin-btn").click()
    err = visible(browser, "#signin-error")
    assert "not accepted" in err.text
    shot(browser, "01-sign-in-rejected")
    key.clear()
    key.send_keys(ADMIN)
    browser.find_element(By.ID, "signin-btn").click()
    visible(browser, "#task-sentiment")
    names = [c.get_attribute("data-task") for c in browser.find_elements(By.CSS_SELECTOR, "#task-list .card")]
    assert {"sentiment", "entities", "extraction", "report_summary", "key_points", "business_line"} <= set(names)
    card = browser.find_element(By.ID, "task-sentiment")
    assert "positive" in card.text and "text" in card.text and "4000" in card.text  # labels and input schema
    assert "ops · admin · tiny-bank-lm" in browser.find_element(By.ID, "session-label").text
    # the key lives in sessionStorage, never in a cookie or localStorage
    assert browser.execute_script("return sessionStorage.getItem('domain-lm.console.api-key')") == ADMIN
    assert browser.execute_script("return localStorage.length") == 0 and browser.get_cookies() == []
    shot(browser, "02-tasks")


def test_run_sentiment(live, browser):
    base, _ = live
    go(browser, base, "/try/sentiment")
    text = visible(browser, "#in-text")
    text.send_keys("Net interest income rose 8 percent and the bank raised its dividend.")
    browser.find_element(By.ID, "run-btn").click()
    output = visible(browser, "#result-output")
    assert output.text in ("positive", "negative", "neutral")
    raw = browser.find_element(By.ID, "result-raw").text
    assert raw.strip() and output.text in raw  # the typed label was parsed from the raw text
    latency = browser.find_element(By.ID, "result-latency").text
    assert latency.endswith(" ms") or latency.endswith(" s")
    assert "tiny-bank-lm" in browser.find_element(By.ID, "result").text
    shot(browser, "03-run-sentiment")

    # Chinese, through the example button
    browser.find_element(By.CSS_SELECTOR, "#lang option[value=zh]").click()
    browser.find_element(By.ID, "example-btn").click()
    assert browser.find_element(By.ID, "in-text").get_attribute("value")  # an example was filled in
    browser.find_element(By.ID, "run-btn").click()
    # the typed output is the canonical label; the raw text is the Chinese display string
    wait(browser, lambda d: d.find_element(By.ID, "result-raw").text.strip() in ("积极", "消极", "中性"))
    assert browser.find_element(By.ID, "result-output").text in ("positive", "negative", "neutral")

    # an invalid input is named next to its field
    browser.find_element(By.ID, "in-text").clear()
    browser.execute_script(
        "document.getElementById('in-text').removeAttribute('maxlength'); document.getElementById('in-text').value = 'x'.repeat(4001)"
    )
    browser.find_element(By.ID, "run-btn").click()
    visible(browser, "#result-error")
    assert "maximum is 4000" in browser.find_element(By.CSS_SELECTOR, "[data-field=text] .field-error").text  # shown under the field
    assert "invalid" in browser.find_element(By.ID, "in-text").get_attribute("class")
    shot(browser, "04-run-invalid-input")


def test_run_json_task(live, browser):
    base, _ = live
    go(browser, base, "/try/entities")
    text = "HSBC and the People's Bank of China met in Shanghai."
    visible(browser, "#in-text").send_keys(text)
    browser.find_element(By.ID, "run-btn").click()
    output = visible(browser, "#result-output")
    value = json.loads(output.text)  # the typed output is rendered as JSON
    # Each entity with its character offsets in the input (grounded spans).
    assert isinstance(value, list) and all(set(item) == {"text", "type", "start", "end"} for item in value)
    assert all(text[item["start"] : item["end"]] == item["text"] for item in value)
    assert browser.find_element(By.ID, "result-raw").text.strip().startswith("[")
    shot(browser, "05-run-json-task")


def test_wrong_template_shows_its_error_and_is_not_saved(live, browser):
    base, templates = live
    go(browser, base, "/editor")
    visible(browser, "#yaml-editor")
    wait(browser, lambda d: "Valid" in d.find_element(By.ID, "check-status").text)  # the starter is valid
    wrong = NEW_TASK.replace("  kind: label", "  kind: lable")
    set_editor(browser, wrong)
    browser.find_element(By.ID, "validate-btn").click()
    bad_line = wrong.splitlines().index("  kind: lable") + 1
    # the list is re-rendered by the typing debounce too: look the element up afresh on every poll
    item = wait(
        browser,
        lambda d: next((e.text for e in d.find_elements(By.CSS_SELECTOR, "#template-errors li") if f"line {bad_line}" in e.text), None),
    )
    assert "output.kind" in item
    # the gutter and status are re-rendered too: poll them (a stale read means "look again")
    wait(browser, lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".gutter div.bad")] == [str(bad_line)])
    wait(browser, lambda d: "problem" in d.find_element(By.ID, "check-status").text)
    assert not browser.find_element(By.ID, "save-btn").is_enabled()
    browser.find_element(By.ID, "dry-run-btn").click()
    visible(browser, "#dry-results .alert.error")
    assert not browser.find_element(By.ID, "save-btn").is_enabled()
    shot(browser, "06-editor-wrong-template")
    assert not (templates / "card_dispute.yaml").exists() and not (templates / ".versions" / "card_dispute@1.yaml").exists()
    assert _get(base + "/v1/tasks/card_dispute")[0] == 404


def test_create_task_in_editor_run_it_and_see_it_listed(live, browser):
    base, templates = live
    go(browser, base, "/editor")
    visible(browser, "#yaml-editor")
    set_editor(browser, NEW_TASK)
    wait(browser, lambda d: "new task card_dispute v1" in d.find_element(By.ID, "check-status").text)
    assert not browser.find_element(By.ID, "save-btn").is_enabled()  # not before a dry run
    browser.find_element(By.ID, "dry-run-btn").click()
    ok = visible(browser, "#dry-results .alert.ok")
    assert "Dry run passed" in ok.text
    answers = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#dry-results .dry-answer")]
    assert len(answers) == 2 and set(answers) <= {"fraud", "billing_error"}
    assert not list(templates.rglob("card_dispute*.yaml"))  # a dry run saves nothing
    shot(browser, "07-editor-dry-run")

    save = browser.find_element(By.ID, "save-btn")
    assert save.is_enabled()
    save.click()
    notice = visible(browser, "#editor-notice .alert.ok")
    assert "Saved card_dispute version 1" in notice.text
    assert (templates / ".versions" / "card_dispute@1.yaml").is_file()  # saved as version 1 in the template store
    assert _get(base + "/v1/tasks/card_dispute")[1]["version"] == 1
    wait(browser, lambda d: "same as the current card_dispute v1" in d.find_element(By.ID, "check-status").text)
    assert not browser.find_element(By.ID, "save-btn").is_enabled()  # no second copy of the same text
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#version-history li[data-version='1']"))
    shot(browser, "08-editor-saved")

    browser.find_element(By.ID, "saved-try-link").click()
    visible(browser, "#in-text").send_keys("Two identical charges from the same hotel appeared on my statement.")
    browser.find_element(By.ID, "run-btn").click()
    assert visible(browser, "#result-output").text in ("fraud", "billing_error")
    shot(browser, "09-run-new-task")

    go(browser, base, "/tasks")
    card = visible(browser, "#task-card_dispute")
    assert "fraud" in card.text and "billing_error" in card.text and "v1" in card.text
    shot(browser, "10-tasks-with-new-task")


def test_edit_task_makes_a_new_version_and_keeps_history(live, browser):
    base, templates = live
    go(browser, base, "/tasks")
    visible(browser, "#task-card_dispute").find_element(By.XPATH, ".//button[text()='Edit template']").click()
    editor = visible(browser, "#yaml-editor")
    draft = editor.get_attribute("value")
    assert draft.startswith("name: card_dispute") and "\nversion:" not in draft  # saving assigns the next version
    wait(browser, lambda d: "same as the current card_dispute v1" in d.find_element(By.ID, "check-status").text)
    set_editor(browser, draft.replace("Decide whether", "Second edition, decide whether"))
    browser.find_element(By.ID, "dry-run-btn").click()
    visible(browser, "#dry-results .alert.ok")
    browser.find_element(By.ID, "save-btn").click()
    assert "Saved card_dispute version 2" in visible(browser, "#editor-notice .alert.ok").text
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#version-history li")) == 2)
    current = browser.find_element(By.CSS_SELECTOR, "#version-history li[data-version='2']")
    assert "current" in current.text and "Second edition" in current.text
    assert (templates / ".versions" / "card_dispute@1.yaml").is_file() and (templates / ".versions" / "card_dispute@2.yaml").is_file()
    shot(browser, "11-editor-version-history")
    # the old version loads back into the editor
    browser.find_element(By.CSS_SELECTOR, "#version-history li[data-version='1'] button").click()
    wait(browser, lambda d: "Second edition" not in d.find_element(By.ID, "yaml-editor").get_attribute("value"))
    assert "Decide whether" in browser.find_element(By.ID, "yaml-editor").get_attribute("value")


def test_runs_page_shows_eval_tables_and_report(live, browser):
    base, _ = live
    go(browser, base, "/runs")
    row = visible(browser, "#runs-table tr[data-run=demo]")
    assert "sft" in row.text and "eval" in row.text
    row.click()
    table = visible(browser, "#run-eval table")
    text = table.text
    assert "sentiment" in text and "0.770" in text and "0.410" in text and "skipped" in text
    best = browser.find_element(By.CSS_SELECTOR, "#run-eval td.best").text
    assert best.startswith("0.770") and "1/10 invalid" in best
    assert "train_loss=1.25" in browser.find_element(By.ID, "run-stages").text
    wait(browser, lambda d: d.find_element(By.ID, "run-report").get_attribute("srcdoc"))
    assert "demo" in browser.find_element(By.ID, "run-report").get_attribute("srcdoc")
    shot(browser, "12-runs")


def test_no_auth_service_opens_without_sign_in(browser, tmp_path):
    """A development service (--no-auth) opens straight on the task list, with no sign-in form."""
    import uvicorn

    from domain_lm.inference.fake import FakeEngine
    from services.app import create_app
    from services.settings import ServiceSettings

    templates = tmp_path / "task_templates"
    shutil.copytree(REPO / "task_templates", templates)
    app = create_app(ServiceSettings(auth=False, templates_dir=str(templates)), engine=FakeEngine(model_name="dev-lm"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        browser.get(f"http://127.0.0.1:{port}/console/")
        visible(browser, "#task-sentiment")
        assert not browser.find_element(By.ID, "signin").is_displayed()
        assert "no API keys" in browser.find_element(By.ID, "session-label").text
    finally:
        server.should_exit = True
        thread.join(timeout=10)
