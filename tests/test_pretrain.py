"""Continued pretraining on the tiny model: loss goes down, artefacts exist, kill-and-resume equals
an uninterrupted run, and the pure helpers (perplexity, replay mix, collate) compute what they say."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from domain_lm.config import build_config


def _config(tmp_path: Path, model_dir: Path, name: str, *overrides: str):
    return build_config(
        {"run": {"name": name, "output_dir": str(tmp_path / "runs")}, "base_model": {"name": str(model_dir)}},
        [
            "corpus.block_size=64",
            "corpus.max_docs=60",  # the embedded corpus, capped (the tiny tokenizer makes many short blocks)
            "pretrain.replay_samples=4",
            "pretrain.replay_max_new_tokens=24",
            "pretrain.eval_max_blocks=16",
            "pretrain.train.batch_size=4",
            "pretrain.train.logging_steps=1",
            "pretrain.train.learning_rate=0.003",
            "pretrain.train.warmup_ratio=0.0",
            "pretrain.peft.method=lora",  # the default is full fine-tuning (test_full_finetune_with_general_corpus)
            "pretrain.peft.lora.dropout=0.1",  # dropout consumes RNG: resume must restore it
            *overrides,
        ],
    )


class _Killed(RuntimeError):
    """Stands in for a kill -9 right after a checkpoint was written."""


def _kill_after_checkpoint(step: int):
    """A TrainerCallback that "kills" the run once the checkpoint of ``step`` is on disk."""
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step >= step:
                raise _Killed(f"killed after checkpoint {state.global_step}")

    return Kill()


def _run_all(cfg, **kw):
    from domain_lm.pipeline.run import run_stage

    run_stage("base", cfg)
    run_stage("corpus", cfg)
    return run_stage("pretrain", cfg, **kw)[0]


def test_pretrain_lowers_loss_and_writes_artefacts(tmp_path, tiny_model_dir):
    from domain_lm.models.loading import is_adapter_dir, load_causal_lm

    cfg = _config(tmp_path, tiny_model_dir, "lora", "pretrain.train.max_steps=16", "pretrain.train.save_steps=8")
    res = _run_all(cfg)
    m = res.metrics
    assert m["steps"] == 16
    assert m["ppl_domain_after"] < 0.9 * m["ppl_domain_before"]
    assert m["loss_last"] < m["loss_first"]
    assert m["blocks_replay"] > 0 and m["tokens_per_s"] > 0
    assert all(k in m for k in ("ppl_general_before", "ppl_general_after", "ppl_domain_change_pct"))
    assert is_adapter_dir(res.artefact("adapter"))
    model = load_causal_lm(res.artefact("model"))
    base = load_causal_lm(tiny_model_dir)
    changed = [n for n, p in model.state_dict().items() if "proj" in n and not torch.equal(p, base.state_dict()[n])]
    assert changed  # the LoRA update was merged into the full weights
    log = [json.loads(line) for line in res.artefact("train_log").read_text().splitlines()]
    assert any("tokens_per_s" in r and "learning_rate" in r for r in log)
    assert res.artefact("curves").stat().st_size > 1000
    assert list(res.artefact("tensorboard").rglob("events.out.tfevents*"))
    card = (res.path / "MODEL_CARD.md").read_text()
    assert "ppl_domain_before" in card and "replay" in card
    # Replay text sampled from the base model is cached in the work dir (so resume reuses it).
    work = tmp_path / "runs" / "lora" / ".work" / "pretrain"
    assert len((work / "replay_samples.jsonl").read_text().splitlines()) == 4


def test_kill_and_resume_equals_uninterrupted(tmp_path, tiny_model_dir):
    from domain_lm.models.loading import load_causal_lm
    from domain_lm.pipeline.run import run_stage

    steps = ["pretrain.train.max_steps=6", "pretrain.train.save_steps=3"]
    straight = _run_all(_config(tmp_path, tiny_model_dir, "straight", *steps))

    cfg = _config(tmp_path, tiny_model_dir, "killed", *steps)
    run_stage("base", cfg)
    run_stage("corpus", cfg)
    with pytest.raises(_Killed):
        run_stage("pretrain", cfg, callbacks=[_kill_after_checkpoint(3)])
    assert not (tmp_path / "runs" / "killed" / "pretrain").exists()  # nothing half-written
    resumed, _ = run_stage("pretrain", cfg, resume=True)
    assert resumed.metrics["resumed"] is True and resumed.metrics["steps"] == 6

    def losses(r):
        rows = [json.loads(line) for line in r.artefact("train_log").read_text().splitlines()]
        return {h["step"]: h["loss"] for h in rows if "loss" in h}

    a, b = losses(straight), losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6)
    wa = load_causal_lm(straight.artefact("model")).state_dict()
    wb = load_causal_lm(resumed.artefact("model")).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert resumed.metrics["ppl_domain_after"] == pytest.approx(straight.metrics["ppl_domain_after"], rel=1e-5)


def test_full_finetune_with_general_corpus(tmp_path, tiny_model_dir):
    """Full fine-tuning, replay from a general corpus given to the corpus stage."""
    general = tmp_path / "general"
    general.mkdir()
    for i, topic in enumerate(["gardening", "astronomy", "cooking", "football"]):
        (general / f"g{i}.txt").write_text(
            f"A short essay about {topic}. "
            + " ".join(f"Sentence {j} talks about {topic} and everyday life in plain words." for j in range(12))
        )
    cfg = _config(
        tmp_path, tiny_model_dir, "full", "pretrain.peft.method=full", "pretrain.train.max_steps=4", "pretrain.train.learning_rate=0.001",
        "pretrain.replay_fraction=0.25", f'corpus.general_sources=[{{"path": "{general}"}}]', "corpus.heldout_fraction=0.25",
    )
    res = _run_all(cfg)
    assert not res.has("adapter")
    assert res.metrics["blocks_replay"] == round(0.25 / 0.75 * res.metrics["blocks_domain"])
    assert math.isfinite(res.metrics["ppl_general_after"])
    assert "corpus.general_sources" in (res.path / "report.md").read_text()
    assert not (tmp_path / "runs" / "full" / ".work" / "pretrain" / "replay_samples.jsonl").exists()


def test_perplexity_of_uniform_model_is_vocab_size():
    from domain_lm.train.pretrain import perplexity

    class Uniform(torch.nn.Module):
        def __init__(self, vocab: int):
            super().__init__()
            self.vocab = vocab
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()

    ppl = perplexity(Uniform(50), [[1, 2, 3, 4, 5], [6, 7, 8]], pad_id=0)
    assert ppl == pytest.approx(50.0, rel=1e-5)


def test_collate_pads_and_masks_labels():
    from domain_lm.train.pretrain import collate_blocks

    out = collate_blocks([{"input_ids": torch.tensor([5, 6, 7])}, {"input_ids": torch.tensor([8])}], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_mix_replay_fraction_and_determinism():
    from domain_lm.train.pretrain import mix_replay

    domain = [[i] for i in range(90)]
    general = [[1000 + i] for i in range(5)]
    mixed = mix_replay(domain, general, 0.1, seed=3)
    n_general = sum(1 for b in mixed if b[0] >= 1000)
    assert n_general == 10 and len(mixed) == 100  # 10% of the result, sampled with replacement
    assert mixed == mix_replay(domain, general, 0.1, seed=3)
    assert mix_replay(domain, general, 0.0, seed=3) == domain


@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeed_zero2_two_processes(tmp_path, tiny_model_dir):
    """A 2-process DeepSpeed ZeRO-2 job of the tiny model on CPU, through the real CLI and launcher."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    from domain_lm.models.loading import load_causal_lm
    from domain_lm.pipeline.store import Run

    ds = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    if not Path(ds).exists():
        pytest.skip("deepspeed launcher not installed")
    repo = Path(__file__).resolve().parents[1]
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "dist", "output_dir": str(tmp_path / "runs")},
                "base_model": {"name": str(tiny_model_dir)},
                "corpus": {"block_size": 64},
                "pretrain": {
                    "replay_samples": 4,
                    "replay_max_new_tokens": 16,
                    "train": {"max_steps": 4, "save_steps": 2, "batch_size": 2, "logging_steps": 1},
                },
            }
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    # base and corpus run once, single process; the launcher then starts two training ranks.
    for stage in ("base", "corpus"):
        script = (
            "from domain_lm.config import load_config; from domain_lm.pipeline.run import run_stage; "
            f"run_stage({stage!r}, load_config({str(cfg_path)!r}))"
        )
        subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=300)
    cmd = [ds, "--no_local_rank", "--num_gpus", "2", "--master_port", "29517", "--module", "domain_lm", "pretrain", "-c", str(cfg_path),
           "-s", f"pretrain.train.deepspeed={repo / 'deploy/deepspeed/zero2.json'}"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dist_world_size=2" in proc.stdout + proc.stderr
    res = Run(tmp_path / "runs" / "dist").load("pretrain")
    assert res is not None and res.metrics["steps"] == 4
    ckpts = sorted((tmp_path / "runs" / "dist" / ".work" / "pretrain" / "trainer").glob("checkpoint-*"))
    assert ckpts and list(ckpts[-1].rglob("*optim_states.pt"))  # ZeRO-2 sharded optimizer states, one per rank
    assert len(list(ckpts[-1].rglob("*optim_states.pt"))) == 2
    model = load_causal_lm(res.artefact("model"))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert math.isfinite(res.metrics["ppl_domain_after"])


def test_lora_top_layers_limits_trainable_params(tiny_model_dir):
    from domain_lm.config import PretrainSection
    from domain_lm.train.pretrain import build_model

    model = build_model(PretrainSection(peft={"method": "lora", "top_layers": 1}), tiny_model_dir)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n for n in trainable)  # the tiny model has layers 0 and 1


def test_full_finetune_of_top_layers_freezes_embeddings_and_lower_layers(tiny_model_dir):
    from domain_lm.config import PretrainSection
    from domain_lm.train.pretrain import build_model

    assert PretrainSection().peft.method == "full"  # the default: full fine-tuning of every layer
    everything = build_model(PretrainSection(), tiny_model_dir)
    assert all(p.requires_grad for p in everything.parameters())
    model = build_model(PretrainSection(peft={"top_layers": 1}), tiny_model_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.1." in n for n in trainable - {"model.norm.weight"}) and "model.norm.weight" in trainable
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "model.embed_tokens.weight" in frozen and any(".layers.0." in n for n in frozen)
    # The gradient stops at the lowest trained layer: one step changes layer 1 only.
    import torch

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).zero_grad()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and all(p.grad is None for n, p in model.named_parameters() if n in frozen)
