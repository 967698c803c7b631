"""DPO stage end to end on the tiny model."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from domain_lm.config import build_config
from domain_lm.models.loading import load_causal_lm
from domain_lm.pipeline.run import run_stage
from tests.rlhf_fixtures import separable_pairs_file


def test_dpo_stage_end_to_end(tmp_path, tiny_model_dir):
    pairs = separable_pairs_file(tmp_path / "sep.jsonl", n=12)
    cfg = build_config(
        {},
        [
            f"run.output_dir={tmp_path / 'runs'}",
            f"base_model.name={tiny_model_dir}",
            f"reward.preference_sources=[{pairs}]",
            "reward.from_tasks=false",
            "reward.eval_fraction=0.25",
            "dpo.train.max_steps=6",
            "dpo.train.batch_size=4",
            "dpo.train.learning_rate=5e-3",
            "dpo.train.max_seq_len=64",
            "dpo.train.save_steps=3",
            "dpo.peft.lora.r=4",
        ],
    )
    run_stage("base", cfg)
    res, _ = run_stage("dpo", cfg)
    m = res.metrics
    assert m["train_pairs"] == 9 and m["eval_pairs"] == 3
    assert "heldout_rewards/accuracies" in m and m["train_loss"] == m["train_loss"]  # not NaN
    # the merged model loads as a causal LM and differs from the base (the adapter was trained)
    tuned = load_causal_lm(res.artefact("model"))
    base = load_causal_lm(tiny_model_dir)
    diffs = [(a - b).abs().max().item() for (_, a), (_, b) in zip(tuned.state_dict().items(), base.state_dict().items())]
    assert max(diffs) > 1e-6
    assert res.has("adapter") and (res.artefact("adapter") / "adapter_config.json").is_file()
    # the merged weights on disk are finite
    weights = load_file(str(res.artefact("model") / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    # checkpoints for --resume live in the work dir
    assert any(p.name.startswith("checkpoint-") for p in (tmp_path / "runs" / "demo" / ".work" / "dpo").iterdir())
