"""Preference data: file formats (pairs, ranked, HH), bank-task pairs, sampled pairs, split."""

from __future__ import annotations

import json

import pytest

from domain_lm.data import preference as pref
from domain_lm.data.records import TaskRecord
from domain_lm.errors import DataError
from domain_lm.inference import GenerationResult
from domain_lm.tasks.contracts.negatives import numbers_in, unfaithful_summary
from domain_lm.tasks.errors import ContractError
from tests.rlhf_fixtures import label_template, load_real_templates, summary_template


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_hh_dialogue_shared_prefix_becomes_prompt(tmp_path):
    row = {
        "chosen": "\n\nHuman: What is APR?\n\nAssistant: The yearly rate.\n\nHuman: And APY?"
        "\n\nAssistant: The yearly yield with compounding.",
        "rejected": "\n\nHuman: What is APR?\n\nAssistant: The yearly rate.\n\nHuman: And APY?\n\nAssistant: No idea.",
    }
    bad = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: different\n\nAssistant: c"}
    pairs = pref.load_preferences(write_jsonl(tmp_path / "hh.jsonl", [row, bad]))
    assert len(pairs) == 1  # the row whose histories differ is skipped
    p = pairs[0]
    assert [m["role"] for m in p.prompt] == ["user", "assistant", "user"]
    assert p.prompt[2]["content"] == "And APY?"
    assert (p.chosen, p.rejected, p.kind) == ("The yearly yield with compounding.", "No idea.", "hh")


def test_pairs_and_ranked_lists(tmp_path):
    rows = [
        {"prompt": "Define LTV.", "chosen": "Loan-to-value ratio.", "rejected": "Lifetime value."},
        {"prompt": [{"role": "user", "content": "Rank"}], "responses": ["best", "mid", "worst"]},
    ]
    pairs = pref.load_preferences(write_jsonl(tmp_path / "p.jsonl", rows))
    assert pairs[0].prompt == [{"role": "user", "content": "Define LTV."}]
    ranked = [(p.chosen, p.rejected) for p in pairs if p.kind == "ranked"]
    assert ranked == [("best", "mid"), ("best", "worst"), ("mid", "worst")]  # k=3 -> 3 ordered pairs
    # round trip through our own JSONL format
    out = tmp_path / "out.jsonl"
    assert pref.save_pairs(pairs, out) == 4
    assert pref.load_preferences(out) == pairs
    trl = pairs[0].to_trl()
    assert trl["chosen"] == [{"role": "assistant", "content": "Loan-to-value ratio."}]


def test_bad_file_names_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "x", "chosen": "a", "rejected": "b"}\n{"foo": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        pref.load_preferences(p)
    with pytest.raises(DataError, match="does not exist"):
        pref.load_preferences(tmp_path / "missing.jsonl")


def test_label_task_pairs_wrong_label_and_contract():
    t = label_template()
    pairs = pref.task_pairs([TaskRecord("sentiment", "en", {"text": "Profit rose 8%."}, "positive")], {"sentiment": t}, seed=0)
    kinds = {p.kind: p for p in pairs}
    assert set(kinds) == {"wrong_label", "contract"}
    assert all(p.chosen == "positive" for p in pairs)
    assert kinds["wrong_label"].rejected in {"negative", "neutral"}
    with pytest.raises(ContractError):
        t.parse_output(kinds["contract"].rejected)
    # the prompt is the template's own rendering (one of its phrasings, picked by the seed)
    assert kinds["wrong_label"].prompt in [t.render_messages({"text": "Profit rose 8%."}, lang="en", variant=v) for v in range(2)]


def test_summary_pairs_quote_numbers_not_in_source():
    t = summary_template()
    src = "Revenue grew 8 percent to 1.2 billion in 2022."
    pairs = pref.task_pairs(
        [TaskRecord("report_summary", "en", {"text": src}, "Revenue up 8% to 1.2 billion.")], {"report_summary": t}, seed=1
    )
    assert [p.kind for p in pairs] == ["unfaithful_numbers"]
    bad = pairs[0].rejected
    assert numbers_in(bad) and not (numbers_in(bad) & numbers_in(src))
    # no numbers in the gold summary: a fabricated figure is appended
    plain = unfaithful_summary("Revenue grew.", src, "en", seed=3)
    assert plain.startswith("Revenue grew.") and numbers_in(plain) - numbers_in(src)


def test_sampled_pairs_ranked_by_metric():
    t = label_template()
    records = [
        TaskRecord("sentiment", "en", {"text": "Loss widened."}, "negative"),
        TaskRecord("sentiment", "en", {"text": "Flat."}, "neutral"),
    ]
    answers = iter(["negative", "positive", "negative", "maybe?", "neutral", "neutral", "neutral", "neutral"])

    class Engine:
        def generate_batch(self, requests):
            assert len(requests) == 8 and requests[0].temperature == 1.0
            return [GenerationResult(text=next(answers)) for _ in requests]

    def scorer(template, text, gold, lang):
        return 1.0 if text == gold else 0.0

    pairs = pref.sampled_pairs(records, {"sentiment": t}, Engine(), k=4, scorer=scorer)
    # record 2 sampled only correct answers: no pair; record 1 pairs the correct with a wrong one
    assert len(pairs) == 1 and pairs[0].chosen == "negative" and pairs[0].rejected in {"positive", "maybe?"}


def test_split_keeps_prompts_together():
    pairs = [pref.PreferencePair(prompt=[{"role": "user", "content": str(i // 2)}], chosen="a", rejected=str(i)) for i in range(20)]
    train, held = pref.split_pairs(pairs, 0.2, seed=1)
    assert len(train) + len(held) == 20 and len(held) == 4
    assert not {p.prompt[0]["content"] for p in train} & {p.prompt[0]["content"] for p in held}
    assert pref.split_pairs(pairs, 0.2, seed=1) == (train, held)


def test_real_templates_give_pairs_for_every_task():
    reg, examples = load_real_templates()
    pairs = pref.task_pairs(examples, reg, seed=0)
    assert {p.task for p in pairs} == set(reg.names()) == {r.task for r in examples}
    for p in pairs:
        assert p.chosen != p.rejected and p.prompt[-1]["role"] == "user"


def test_reward_build_cli(tmp_path):
    from typer.testing import CliRunner

    from domain_lm.cli.reward import app

    src = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "q", "responses": ["a", "b", "c"]}, {"prompt": "r", "chosen": "x", "rejected": "y"}]
    )
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["build", "--source", str(src), "--no-tasks", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(pref.load_preferences(out)) == 4 and "ranked=3" in res.output


def test_sampled_pairs_with_the_hf_engine(tiny_model_dir):
    from domain_lm.inference import create_engine

    t = label_template()
    records = [TaskRecord("sentiment", "en", {"text": s}, "positive") for s in ("Profit rose", "Deposits grew")]
    engine = create_engine(str(tiny_model_dir), kind="hf")
    try:
        # the random tiny model never says a label, so rank its samples by length instead
        pairs = pref.sampled_pairs(
            records, {"sentiment": t}, engine, k=3, max_tokens=8, scorer=lambda t, text, gold, lang: float(len(text))
        )
    finally:
        engine.close()
    assert pairs and all(len(p.chosen) > len(p.rejected) and p.kind == "sampled" for p in pairs)
