"""Metrics against hand-computed values (each number below is worked out in the comment)."""

from __future__ import annotations

import pytest

from domain_lm.tasks import metrics as M


def test_classification_counts_invalid_as_wrong():
    gold = ["positive", "positive", "negative", "neutral"]
    pred = ["positive", "negative", "negative", None]
    s = M.classification_scores(gold, pred, labels=["negative", "neutral", "positive"])
    # pos: P=1 R=1/2 F=2/3; neg: P=1/2 R=1 F=2/3; neu: F=0 (the invalid answer is its miss)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx(4 / 9)
    assert s["weighted_f1"] == pytest.approx((2 * 2 / 3 + 1 * 2 / 3 + 0) / 4)
    assert s["invalid"] == 1 and s["n"] == 4
    assert s["per_class_f1"]["neutral"] == 0.0


def test_entity_level_prf():
    gold = [[{"text": "Apple", "type": "ORG"}, {"text": "Tim Cook", "type": "PER"}], [{"text": "Paris", "type": "LOC"}]]
    pred = [[{"text": "apple", "type": "org"}, {"text": "Tim Cook", "type": "ORG"}], None]
    s = M.entity_scores(gold, pred)
    # tp=1 (Apple/ORG; Tim Cook has the wrong type), 2 predicted, 3 gold
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(0.4)
    assert s["invalid"] == 1
    assert s["per_type"]["PER"]["recall"] == 0.0


def test_rouge_english_words():
    r = M.rouge("the cat sat on the mat", "the cat on the mat")
    # unigrams: 5 overlap, P=1, R=5/6 -> 10/11; bigrams: 3 overlap of 4 cand / 5 ref -> 2/3; LCS=5 -> 10/11
    assert r["rouge1"] == pytest.approx(10 / 11)
    assert r["rouge2"] == pytest.approx(2 / 3)
    assert r["rougeL"] == pytest.approx(10 / 11)


def test_rouge_chinese_is_character_level():
    r = M.rouge("营业收入增长", "收入增长了")
    # chars: 4 overlap, P=4/5 R=4/6 -> 8/11; bigrams 3 overlap of 4 / 5 -> 2/3; LCS 4 -> 8/11
    assert r["rouge1"] == pytest.approx(8 / 11)
    assert r["rouge2"] == pytest.approx(2 / 3)
    assert r["rougeL"] == pytest.approx(8 / 11)
    assert M.rouge_tokens("收入增长12%", "zh") == ["收", "入", "增", "长", "12"]


def test_rouge_scores_invalid_is_zero():
    s = M.rouge_scores(["a b c", "a b"], ["a b c", None])
    assert s["rouge1"] == pytest.approx(0.5) and s["invalid"] == 1


@pytest.mark.parametrize(
    "gold,pred,ok",
    [("1,234.5", 1234, True), ("12%", "12.5", False), ("(3.4)", -3.4, True), (100, "$100.4 million", True), ("n/a", "0", False)],
)
def test_numeric_match_tolerance(gold, pred, ok):
    assert M.numeric_match(gold, pred, rel_tol=0.01) is ok


def test_extraction_exact_and_numeric():
    gold = [{"value": 12.5, "unit": "million"}, {"value": 3, "unit": "billion"}, "42"]
    pred = [{"value": "12.6", "unit": "Million"}, None, "42.0"]
    s = M.extraction_scores(gold, pred, rel_tol=0.01)
    # ex1: 12.6 within 1% of 12.5, unit equal after normalisation -> exact; ex2 invalid; ex3 numeric-equal
    assert s["exact_match"] == pytest.approx(2 / 3)
    assert s["field_accuracy"] == pytest.approx(3 / 5)
    assert s["numeric_match"] == pytest.approx(2 / 3) and s["numeric_n"] == 3
    assert s["invalid"] == 1


def test_score_dispatch_and_primary():
    s = M.score("classification", ["a", "b"], ["a", "a"])
    assert M.primary("classification", s) == pytest.approx(s["weighted_f1"])
    with pytest.raises(ValueError):
        M.score("bleu", [], [])


def test_extraction_exact_match_is_the_answer_and_the_evidence_is_scored_apart():
    from domain_lm.tasks.metrics import extraction_scores

    gold = {"evidence": "which resulted in a $902 million gain", "value": 902, "unit": "USD million", "period": "2020"}
    other_span = {**gold, "evidence": "a $902 million gain"}  # another span of the text that states the figure
    wrong_unit = {**gold, "unit": "USD thousand"}
    s = extraction_scores([gold, gold, gold], [other_span, wrong_unit, None])
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["per_field_accuracy"]["evidence"] == pytest.approx(1 / 3) and s["per_field_accuracy"]["unit"] == pytest.approx(1 / 3)
    # token F1 after SQuAD normalisation ("902 million gain" in "which resulted in 902 million gain"), 1.0, 0 for no answer
    assert s["evidence_overlap"] == pytest.approx((2 * 3 / 9 + 1.0 + 0.0) / 3)
