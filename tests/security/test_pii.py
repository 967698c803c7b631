"""Findings 1-2: PII masking is linear, bounded, off the event loop, and misses no bank identifier.

Each case is a real-world way of writing an identifier (EN and ZH). ``mask`` must replace it with
the expected placeholder and leave no run of four or more of its digits anywhere in the output;
ordinary numbers (amounts, dates, years, percentages) must come out unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

from domain_lm.pii import mask, mask_value, scrub
from services.logs import JsonFormatter

from .conftest import ADMIN, client, make_app

CARD, ACCOUNT, ID, PHONE, EMAIL = "<CARD_NUMBER>", "<ACCOUNT_NUMBER>", "<ID_NUMBER>", "<PHONE>", "<EMAIL>"

# (text, the identifier inside it, the placeholder it must become)
IDENTIFIERS = [
    # cards: Luhn-valid numbers grouped every way people write them
    ("card 4111 1111 1111 1111 expired", "4111 1111 1111 1111", CARD),
    ("Visa 4111-1111-1111-1111.", "4111-1111-1111-1111", CARD),
    ("4111111111111111", "4111111111111111", CARD),
    ("paid with 4111  1111  1111  1111 (double spaces)", "4111  1111  1111  1111", CARD),
    ("card\u00a04111\u00a01111\u00a01111\u00a01111 on file", "4111\u00a01111\u00a01111\u00a01111", CARD),
    ("4111.1111.1111.1111", "4111.1111.1111.1111", CARD),
    ("4111/1111/1111/1111", "4111/1111/1111/1111", CARD),
    ("Mastercard 5500 0000 0000 0004", "5500 0000 0000 0004", CARD),
    ("Amex 3782 822463 10005 charged", "3782 822463 10005", CARD),
    ("2-series MC 2223 0000 4841 0010", "2223 0000 4841 0010", CARD),
    ("银联卡 6222 0212 3456 7890 123 已冻结", "6222 0212 3456 7890 123", CARD),
    ("卡号：6222021234567890123", "6222021234567890123", CARD),
    ("卡号６２２２０２１２３４５６７８９０１２３（全角）", "６２２２０２１２３４５６７８９０１２３", CARD),
    ("card 4111\u200b1111\u200b1111\u200b1111 hidden zero-width", "4111\u200b1111\u200b1111\u200b1111", CARD),
    ("2024-03-31 4111 1111 1111 1111", "4111 1111 1111 1111", CARD),
    # Chinese resident IDs: 18 digits with GB 11643 check digit, the old 15 digits, groupings
    ("身份证号 11010519491231002X", "11010519491231002X", ID),
    ("身份证 11010519491231002x 小写", "11010519491231002x", ID),
    ("证件号码：１１０１０５１９４９１２３１００２Ｘ", "１１０１０５１９４９１２３１００２Ｘ", ID),
    ("ID 110105 19491231 002X (6-8-4)", "110105 19491231 002X", ID),
    ("ID 110105-19491231-002X", "110105-19491231-002X", ID),
    ("旧身份证 110105491231002", "110105491231002", ID),
    ("客户身份证号 110105194912310021 请勿外传", "110105194912310021", ID),  # checksum wrong, keyword decides
    ("SSN 123-45-6789 on the form", "123-45-6789", ID),
    # IBANs (mod-97), any case, grouped or not
    ("IBAN GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32", ACCOUNT),
    ("iban gb82 west 1234 5698 7654 32", "gb82 west 1234 5698 7654 32", ACCOUNT),
    ("DE89370400440532013000", "DE89370400440532013000", ACCOUNT),
    ("pay to FR14 2004 1010 0505 0001 3M02 606 today", "FR14 2004 1010 0505 0001 3M02 606", ACCOUNT),
    # account numbers after a keyword, however it is phrased
    ("acct is 12345678901", "12345678901", ACCOUNT),
    ("account no. 00123456789", "00123456789", ACCOUNT),
    ("my account number is 0012-3456-7890", "0012-3456-7890", ACCOUNT),
    ("a/c 1234567", "1234567", ACCOUNT),
    ("账号：6228480402564890", "6228480402564890", CARD),
    ("账户 20230415001", "20230415001", ACCOUNT),
    ("帐号 123456789012", "123456789012", ACCOUNT),
    # phones
    ("call +1 (212) 555-0199 now", "+1 (212) 555-0199", PHONE),
    ("(212) 555-0199", "(212) 555-0199", PHONE),
    ("212.555.0199", "212.555.0199", PHONE),
    ("手机 13812345678", "13812345678", PHONE),
    ("手机 138 1234 5678", "138 1234 5678", PHONE),
    ("+86 138-1234-5678", "+86 138-1234-5678", PHONE),
    ("电话 010-65528888", "010-65528888", PHONE),
    ("(010) 6552 8888", "(010) 6552 8888", PHONE),
    ("+44 20 7946 0958", "+44 20 7946 0958", PHONE),
    ("手机１３８１２３４５６７８", "１３８１２３４５６７８", PHONE),
    # e-mails
    ("mail jane.doe@bank.example.com.", "jane.doe@bank.example.com", EMAIL),
    ("JANE_DOE+kyc@Bank.CO.UK", "JANE_DOE+kyc@Bank.CO.UK", EMAIL),
    ("邮箱zhang.san@icbc.com.cn谢谢", "zhang.san@icbc.com.cn", EMAIL),
    ("ｊａｎｅ＠ｂａｎｋ．ｃｏｍ", "ｊａｎｅ＠ｂａｎｋ．ｃｏｍ", EMAIL),
]

ORDINARY = [
    "Revenue of 1,234,567 rose 12.5% to 2024-03-31; EPS 1.25; CET1 13.1%.",
    "4111111111111112 fails Luhn and has no keyword.",
    "Net interest income was CNY 12,345,678.90 in FY2023 (2022: 11,987,654.32).",
    "Rates 2019 2020 2021 2022 2023 rose.",
    "Meeting on 31.03.2024 at 10:30, or 2024/04/01.",
    "营业收入同比增长 8.5%，达到 1,234.56 亿元（2023年）。",
    "Dates 2024-03-31 2024-04-30 and 20240331.",
    "Price 1 234 567 EUR, ratio 0.125, 100 bps.",
]


def _digit_runs(identifier: str) -> list[str]:
    """Every four consecutive digits of the identifier (an e-mail: its local part)."""
    if "@" in identifier or "＠" in identifier:
        return [identifier.split("@")[0].split("＠")[0]]
    digits = re.sub(r"\D", "", identifier.translate({c: str(c - 0xFF10) for c in range(0xFF10, 0xFF1A)}))
    return [digits[i : i + 4] for i in range(0, len(digits) - 3)]


def test_table_has_at_least_40_real_world_formats():
    assert len(IDENTIFIERS) >= 40 and any(re.search(r"[\u4e00-\u9fff]", t) for t, _, _ in IDENTIFIERS)


@pytest.mark.parametrize("text, identifier, placeholder", IDENTIFIERS, ids=[i for _, i, _ in IDENTIFIERS])
def test_identifier_is_masked_and_no_digits_remain(text, identifier, placeholder):
    out = mask(text)
    assert placeholder in out, out
    normal = re.sub(r"[\s.\-/()]", "", out.translate({c: str(c - 0xFF10) for c in range(0xFF10, 0xFF1A)}))
    for run in _digit_runs(identifier):
        assert run not in normal and run not in out, f"{run!r} of {identifier!r} left in {out!r}"


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_numbers_are_left_alone(text):
    assert scrub(text) == (text, {})


@pytest.mark.parametrize(
    "name, text",
    [
        ("letters", "a" * 100_000),
        ("email-like", "a@" * 50_000),
        ("digits", "1" * 100_000),
        ("spaced digits", "1 " * 50_000),
        ("six-digit numbers", "123456 " * 14_285),
        ("keywords", "account " * 12_500),
        ("phones", "+1 (212) 555-0199 " * 5_555),
        (
            "realistic",
            ("Refund card 4111 1111 1111 1111 to jane.doe@bank.com; revenue 1,234,567 in 2024. 客户手机 13812345678。" * 1200)[:100_000],
        ),
    ],
)
def test_mask_is_linear(name, text):
    """Four times the text costs about four times the time (quadratic would be sixteen).

    Timing goals (100,000 characters under 50 ms) are measured by bench/pii_bench.py; here the
    bounds only catch a super-linear pattern, with room for a loaded machine."""
    mask(text[:1000])  # warm the regex caches
    quarter = text[: len(text) // 4]
    small = min(_time(mask, quarter) for _ in range(3))  # best of three: the machine is shared
    full = min(_time(mask, text) for _ in range(3))
    assert full < 1.0, f"{name}: {full * 1000:.0f} ms"  # the unanchored e-mail pattern took ~4 s on 100,000 'a's
    assert full < 8 * max(small, 0.002), f"{name}: 4x the text took {full / small:.1f}x the time"


def _time(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def test_mask_value_masks_keys_integers_and_bounds_size():
    body = {"4111111111111111": "key", "amount": 4111111111111111, "nested": [{"13812345678": 13812345678}], "ok": 1234, "flag": True}
    out = mask_value(body)
    dumped = json.dumps(out)
    assert "4111" not in dumped and "1381234" not in dumped and out["ok"] == 1234 and out["flag"] is True
    long = "x" * 20_000 + " 4111 1111 1111 1111"
    cut = mask_value(long)
    assert len(cut) < 9000 and "more characters" in cut
    tail = "y" * 8180 + "4111 1111 1111 1111"  # an identifier straddling the cut is dropped, not half-kept
    assert "4111" not in mask_value(tail)
    deep: dict = {}
    cur = deep
    for _ in range(100):
        cur["k"] = {}
        cur = cur["k"]
    assert "nested too deeply" in json.dumps(mask_value(deep))


PII_INPUT = {"text": "Refund card 4111 1111 1111 1111, id 11010519491231002X, call 13812345678, mail jane.doe@bank.com."}


def test_audit_lines_and_error_bodies_hold_no_identifier_digits(templates, keys_file, caplog):
    caplog.set_level(logging.INFO, logger="domain_lm.audit")
    app = make_app(templates, keys_file, log_bodies=True)
    with client(app, ADMIN) as c:
        ok = c.post("/v1/tasks/sentiment", json={"input": PII_INPUT})
        bad_key = c.post("/v1/tasks/sentiment", json={"input": {"4111111111111111": "x"}})  # a dict key as PII
        bad_type = c.post("/v1/tasks/sentiment", json={"input": {"text": 4111111111111111}})  # an integer as PII
        bad_lang = c.post("/v1/tasks/sentiment", json={"input": {"text": "x"}, "lang": "13812345678"})
        bad_model = c.post("/v1/tasks/sentiment", json={"input": "4111 1111 1111 1111"})  # request-model 422 echoes input
    assert ok.status_code == 200
    for r in (bad_key, bad_type, bad_lang, bad_model):
        assert r.status_code == 422 and "4111" not in r.text and "1381234" not in r.text, r.text
    lines = [JsonFormatter().format(rec) for rec in caplog.records if rec.name == "domain_lm.audit"]
    assert len(lines) == 5
    joined = "\n".join(lines)
    for digits in ("4111", "1101051949", "1381234", "jane.doe"):
        assert digits not in joined, joined
    logged = [json.loads(line) for line in lines]
    assert "<CARD_NUMBER>" in logged[0]["body"]["text"]
    # Bodies are logged only once they passed validation: none for the refused calls.
    assert all("body" not in x for x in logged[1:])
    assert all(x["request_id"] and x["client"] for x in logged)


def test_unauthenticated_15kb_url_costs_little(templates, keys_file):
    app = make_app(templates, keys_file)
    url = "/v1/tasks/sentiment?q=" + "a" * 15_000
    with client(app, key=None) as c:
        for _ in range(20):
            assert c.post(url, json={"input": {"text": "x"}}).status_code == 401
        metrics = c.get("/metrics").text
    # Time spent inside the app (middleware to response), from its own latency histogram.
    total = float(re.search(r'domain_lm_request_latency_seconds_sum\{endpoint="/v1/tasks/\{name\}",task=""\} (\S+)', metrics).group(1))
    count = float(re.search(r'domain_lm_request_latency_seconds_count\{endpoint="/v1/tasks/\{name\}",task=""\} (\S+)', metrics).group(1))
    # bench/pii_bench.py measures the 5 ms goal on a quiet machine; this bound catches a return of
    # the quadratic masking (~200 ms per call) with room for a loaded one.
    assert count == 20 and total / count < 0.03, f"{total / count * 1000:.2f} ms per unauthenticated call"
    # The URL is never logged (the audit line has the route); were it masked, a 15 KB line is cheap.
    line = "POST " + url + " HTTP/1.1"
    mask(line)
    assert min(_time(mask, line) for _ in range(5)) < 0.03


def test_masking_runs_on_the_listener_thread_not_the_caller(tmp_path):
    import threading

    from services.logs import configure_logging, stop_logging

    audit = tmp_path / "audit.jsonl"
    configure_logging("INFO", str(audit), max_bytes=10_000, backups=2)
    seen: list[str] = []
    original = JsonFormatter.format

    def spy(self, record):
        seen.append(threading.current_thread().name)
        return original(self, record)

    try:
        JsonFormatter.format = spy  # type: ignore[method-assign]
        from services.logs import audit as audit_line

        for i in range(200):
            audit_line(
                "ops",
                "POST /v1/tasks/{name}",
                "sentiment",
                200,
                1.0,
                body={"text": "card 4111 1111 1111 1111 " + "z" * 200},
                request_id=f"r{i}",
            )
        stop_logging()
    finally:
        JsonFormatter.format = original  # type: ignore[method-assign]
        logging.getLogger().handlers[:] = []
        logging.getLogger("domain_lm.audit").handlers[:] = []
        logging.getLogger("domain_lm.audit").propagate = True
    assert seen and threading.main_thread().name not in seen
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[:3] == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]  # rotated, bounded
    assert "4111" not in "".join(p.read_text() for p in tmp_path.iterdir())
