"""Unit tests of the corpus cleaning rules, the PII scrubber and the deduper (pure functions)."""

from __future__ import annotations

import pytest

from domain_lm.data.corpus_clean import clean_document, detect_lang, effective_length, normalise, strip_boilerplate
from domain_lm.data.dedupe import Deduper, shingles
from domain_lm.pii import mask, scrub


def test_normalise_nfkc_and_control_chars():
    assert normalise("Ｑ３ ＥＰＳ　１．２５\r\nﬁnance\x00") == "Q3 EPS 1.25\nfinance"


@pytest.mark.parametrize("line", ["12", "- 7 -", "Page 3 of 40", "p. 9", "3/40", "第 5 页", "第5页 共20页"])
def test_page_number_lines_dropped(line):
    text, dropped = strip_boilerplate(f"Net income rose.\n{line}\nCosts fell.")
    assert dropped == 1 and line not in text.split("\n") and "Costs fell." in text


def test_running_headers_and_legal_paragraphs_dropped():
    page = "ACME Bank 10-K 2023\nBody text {i} about loans and deposits."
    raw = ("\n\f\n".join(page.format(i=i) for i in range(3))
           + "\n\nFORWARD-LOOKING STATEMENTS: this report contains forward-looking statements.\n\n© 2023 ACME. All rights reserved.")
    text, dropped = clean_document(raw)
    assert "ACME Bank 10-K" not in text and "forward-looking" not in text.lower() and "rights reserved" not in text
    assert all(f"Body text {i}" in text for i in range(3))
    assert dropped == 3 + 2
    # A header seen only twice is ordinary text and stays.
    assert "ACME Bank 10-K" in clean_document("ACME Bank 10-K\nx\nACME Bank 10-K\ny")[0]


def test_language_tag_and_effective_length():
    assert detect_lang("银行发布年度报告，营业收入增长。") == "zh"
    assert detect_lang("The bank (华信银行) reported higher income this year.") == "en"
    assert detect_lang("华信银行 (Huaxin Bank) 2023年营业收入增长百分之六，净利润增长。") == "zh"
    assert effective_length("银行ab") == 2 * 3 + 2


def test_pii_types_and_placeholders():
    text = (
        "Mail jane.doe@bank.example.com, call +1 (212) 555-0199 or 13812345678 or 020-12345678; "
        "card 4111 1111 1111 1111; id 11010519491231002X; SSN 123-45-6789; account no. 00123456789; "
        "IBAN GB82 WEST 1234 5698 7654 32."
    )
    out, counts = scrub(text)
    assert counts == {"EMAIL": 1, "PHONE": 3, "CARD_NUMBER": 1, "ID_NUMBER": 2, "ACCOUNT_NUMBER": 2}
    assert "<EMAIL>" in out and "<CARD_NUMBER>" in out and "account no. <ACCOUNT_NUMBER>" in out
    for raw in ["jane.doe", "555-0199", "13812345678", "12345678", "4111", "11010519491231002X", "123-45-6789", "00123456789", "GB82"]:
        assert raw not in out
    assert mask(text) == out


def test_pii_leaves_financial_figures_alone():
    text = "Revenue of 1,234,567 rose 12.5% to 2024-03-31; EPS 1.25; CET1 13.1%; 4111111111111112 fails Luhn."
    assert scrub(text) == (text, {})


def test_deduper_exact_near_and_distinct():
    base = " ".join(f"word{i}" for i in range(200))
    d = Deduper(threshold=0.8, num_perm=128)
    assert d.check("a", base) is None
    assert d.check("b", base.upper().replace(" ", "  ")) == "exact"
    assert d.check("c", base.replace("word100", "changed")) == "near"
    assert d.check("d", " ".join(f"other{i}" for i in range(200))) is None
    assert Deduper(threshold=1.0).check("x", base) is None  # extreme thresholds still construct


def test_chinese_shingles_are_characters():
    assert "银行发布年" in shingles("银行发布年度报告")
