"""Reward model stage on the tiny model: a separable preference set is learnt to 100% accuracy."""

from __future__ import annotations

import json

import pytest
import torch

from domain_lm.config import build_config
from domain_lm.data.preference import PreferencePair
from domain_lm.pipeline.run import run_stage
from domain_lm.train import reward
from tests.rlhf_fixtures import separable_pairs_file


def reward_config(tmp_path, tiny_model_dir, pairs_file, **extra):
    overrides = [
        f"run.output_dir={tmp_path / 'runs'}",
        f"base_model.name={tiny_model_dir}",
        f"reward.preference_sources=[{pairs_file}]",
        "reward.from_tasks=false",
        "reward.eval_fraction=0.25",
        "reward.train.max_steps=40",
        "reward.train.batch_size=8",
        "reward.train.learning_rate=3e-3",
        "reward.train.warmup_ratio=0.0",
        "reward.train.max_seq_len=64",
        "reward.train.save_steps=20",
        "reward.peft.lora.r=8",
    ]
    return build_config({}, overrides + [f"{k}={v}" for k, v in extra.items()])


def test_reward_stage_learns_separable_pairs(tmp_path, tiny_model_dir):
    cfg = reward_config(tmp_path, tiny_model_dir, separable_pairs_file(tmp_path / "sep.jsonl"))
    run_stage("base", cfg)
    res, skipped = run_stage("reward", cfg)
    assert not skipped
    m = res.metrics
    assert m["eval_is_heldout"] and m["eval_pairs"] == 6 and m["train_pairs"] == 18
    assert m["accuracy"] == 1.0
    stats = json.loads((res.artefact("reward_model") / reward.STATS_FILE).read_text())
    assert stats["std"] > 0 and stats["accuracy"] == 1.0
    assert res.artefact("margin_hist").stat().st_size > 1000
    assert (res.artefact("preferences") / "eval.jsonl").read_text().count("\n") == 6

    # the saved reward model reloads and ranks a fresh pair the same way
    model, tok, loaded = reward.load_reward_model(res.artefact("reward_model"))
    assert loaded == stats
    prompt = [{"role": "user", "content": "Question 99: is this good news? fresh"}]
    s = reward.score(model, tok, [prompt, prompt], ["positive", "negative"])
    assert s[0] > s[1]


def test_pair_metrics_are_pairwise():
    class Model(torch.nn.Module):
        """Scores a sequence by its length: longer answers win."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            return type("O", (), {"logits": attention_mask.sum(1, keepdim=True).float()})()

    class Tok:
        pad_token_id = 0

        def apply_chat_template(self, msgs, tokenize, return_dict):
            return {"input_ids": [1] * sum(len(m["content"]) for m in msgs)}

    p = [{"role": "user", "content": "q"}]
    pairs = [PreferencePair(prompt=p, chosen="long answer", rejected="no"), PreferencePair(prompt=p, chosen="a", rejected="bbbb")]
    m, margins = reward.pair_metrics(Model(), Tok(), pairs)
    # lengths: 1+11=12 vs 1+2=3 -> margin 9 ; 1+1=2 vs 1+4=5 -> margin -3 ; accuracy 1/2
    assert margins.tolist() == [9.0, -3.0]
    assert m["accuracy"] == 0.5 and m["margin_mean"] == 3.0
    # rewards 12, 2, 3, 5 -> mean 5.5
    assert m["reward_mean"] == pytest.approx(5.5)


def test_peft_config_top_layers(tiny_model_dir):
    from domain_lm.config import LoraSection
    from domain_lm.models.loading import load_seq_classifier, lora_config

    model = load_seq_classifier(tiny_model_dir, num_labels=1)
    # the tiny model has 2 layers: top 1 -> only layer 1 is adapted; top >= depth -> every layer
    assert lora_config(LoraSection(), task_type="SEQ_CLS", model=model, top_layers=1).layers_to_transform == [1]
    assert lora_config(LoraSection(), task_type="SEQ_CLS", model=model, top_layers=5).layers_to_transform is None
