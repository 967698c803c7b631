"""The eval stage's engine plan: LoRA stages are adapters on one engine (stacks combined), a full
fine-tune starts a second engine whose later stages are adapters on it, never one engine per stage;
every task x stage is submitted at once and the report carries the scorecard."""

from __future__ import annotations

import json

import pytest

from domain_lm.eval.engines import StageModel, plan_engines
from domain_lm.pipeline.stage import StageInputs
from domain_lm.pipeline.store import StageResult

from .conftest import REPO


def _lora(model_dir, out, seed):
    import torch
    from peft import LoraConfig, get_peft_model

    from domain_lm.models.loading import load_causal_lm, load_tokenizer, merge_adapter

    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(load_causal_lm(model_dir), lora)
    model.save_pretrained(out / "adapter")
    load_tokenizer(model_dir).save_pretrained(out / "adapter")
    merge_adapter(out / "adapter", out / "model")
    return out


@pytest.fixture(scope="module")
def chain(tiny_model_dir, tmp_path_factory):
    """base -> pretrain (LoRA) -> sft (LoRA on merged pretrain) -> ppo (LoRA on merged sft), as stage dirs."""
    root = tmp_path_factory.mktemp("chain")
    dirs = {"base": tiny_model_dir}
    for i, (stage, parent) in enumerate((("pretrain", "base"), ("sft", "pretrain"), ("ppo", "sft"))):
        dirs[stage] = _lora(dirs[parent] if parent == "base" else dirs[parent] / "model", root / stage, i)
    return dirs


def _models(chain, full_pretrain=False):
    out = [StageModel("base", chain["base"])]
    out.append(StageModel("pretrain", chain["pretrain"] / "model", None if full_pretrain else chain["pretrain"] / "adapter", "base"))
    out.append(StageModel("sft", chain["sft"] / "model", chain["sft"] / "adapter", "pretrain"))
    out.append(StageModel("ppo", chain["ppo"] / "model", chain["ppo"] / "adapter", "sft"))
    return out


def test_lora_stages_share_one_engine(chain, tmp_path):
    (group,) = plan_engines(_models(chain))
    assert group.root == "base" and [len(c) for c in group.systems.values()] == [0, 1, 2, 3]
    dirs = group.adapter_dirs(tmp_path)
    assert set(dirs) == {"pretrain", "sft", "ppo"} and dirs["pretrain"] == chain["pretrain"] / "adapter"  # one adapter: used as is
    assert json.loads((dirs["ppo"] / "adapter_config.json").read_text())["r"] == 12  # three rank-4 stages combined


def test_full_fine_tune_starts_one_more_engine_not_one_per_stage(chain):
    base, pretrained = plan_engines(_models(chain, full_pretrain=True))
    assert base.systems == {"base": []}
    assert pretrained.root == "pretrain" and pretrained.model == chain["pretrain"] / "model"
    assert {s: len(c) for s, c in pretrained.systems.items()} == {"pretrain": 0, "sft": 1, "ppo": 2}
    assert [g.root for g in plan_engines(_models(chain), use_adapters=False)] == ["base", "pretrain", "sft", "ppo"]


def test_stage_models_trust_an_adapter_only_on_its_own_parent(chain, tmp_path):
    def result(stage, path, fp, lineage=(), adapter=True):
        arts = {"model": "model", **({"adapter": "adapter"} if adapter else {})}
        return StageResult(stage, path, fingerprint=fp, artefacts=arts,
                           lineage=[{"stage": s, "fingerprint": f, "path": ""} for s, f in lineage])

    base = StageResult("base", chain["base"].parent, fingerprint="b0", artefacts={"model": chain["base"].name})
    pre = result("pretrain", chain["pretrain"], "p0", [("base", "b0")])
    sft = result("sft", chain["sft"], "s0", [("base", "b0"), ("pretrain", "p0")])
    stale = result("ppo", chain["ppo"], "q0", [("base", "b0"), ("sft", "OLD")])  # sft re-ran after PPO trained on it
    from domain_lm.stages.eval import stage_models

    models = stage_models(StageInputs("eval", results={"base": base, "pretrain": pre, "sft": sft, "ppo": stale}))
    assert [(m.stage, m.parent) for m in models] == [("base", None), ("pretrain", "base"), ("sft", "pretrain"), ("ppo", None)]
    assert models[3].adapter is None  # scored on its own merged weights
    assert [g.root for g in plan_engines(models)] == ["base", "ppo"]


class _SwapEngine:
    """A fake engine that can load other weights in place (as ``VllmEngine.load_weights``)."""

    def __init__(self, engine, loaded):
        self.engine, self.loaded = engine, loaded

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def load_weights(self, path):
        self.loaded.append(path)


@pytest.mark.parametrize("strategy", ["adapters", "swap", "per_stage"])
def test_eval_report_scores_every_stage_on_one_engine(chain, monkeypatch, tmp_path, strategy):
    from domain_lm import inference
    from domain_lm.config import build_config
    from domain_lm.inference.fake import FakeEngine
    from domain_lm.stages import eval as eval_stage
    from domain_lm.tasks import TemplateRegistry

    engines: list[FakeEngine] = []
    loaded: list = []

    def fake(path, kind, adapters=None, **opts):
        engines.append(FakeEngine(model_name=str(path), adapters=adapters))
        return _SwapEngine(engines[-1], loaded) if strategy == "swap" else engines[-1]

    monkeypatch.setattr(inference, "create_engine", fake)
    cfg = build_config({"tasks": {"templates_dir": str(REPO / "task_templates")},
                        "eval": {"max_examples": 30, "strategy": strategy, "baseline": strategy == "adapters"}})
    registry = TemplateRegistry.load(cfg.tasks.templates_dir)
    report, preds = eval_stage.build_report(cfg, registry, _models(chain), tmp_path)
    requests = [r for e in engines for r in e.requests]
    assert len(requests) == 4 * 4 * 30 and report["answers"] == 480  # stages x tasks x examples
    if strategy == "adapters":
        (engine,) = engines
        assert engine.model_name == str(chain["base"]) and set(engine.adapters) == {"pretrain", "sft", "ppo"}
        assert {r.adapter for r in requests} == {None, "pretrain", "sft", "ppo"}
        assert report["engines"][0]["systems"] == ["base", "pretrain", "sft", "ppo"]
    elif strategy == "swap":
        assert len(engines) == 1 and loaded == [chain[s] / "model" for s in ("pretrain", "sft", "ppo")]
        assert [e["systems"] for e in report["engines"]] == [["base"], ["pretrain"], ["sft"], ["ppo"]]
    else:
        assert [e.model_name for e in engines] == [str(chain["base"])] + [str(chain[s] / "model") for s in ("pretrain", "sft", "ppo")]
    assert all(r.adapter is None for r in requests) or strategy == "adapters"
    rows = {r["task"]: r for r in report["scorecard"]["rows"]}
    assert set(rows) == {"sentiment", "customer_intent", "entities", "extraction"}
    assert rows["sentiment"]["final"] == "ppo" and rows["sentiment"]["beats_base"]["diff"] == 0  # the fake answers alike
    assert rows["entities"]["needs_llm"]["answer"] == "n/a" and all(r["n"] == 30 for r in rows.values())
    assert len(preds["ppo"]["extraction"]) == 30
    if strategy == "adapters":  # the baseline (fitted once: it does not depend on the strategy)
        assert rows["sentiment"]["needs_llm"]["answer"] in ("yes", "no")
        cell = report["tasks"]["customer_intent"]["systems"]["baseline (tf-idf+lr)"]
        assert cell["n"] == 30 and cell["train_n"] > 5000 and cell["ci95"][0] <= cell["weighted_f1"] <= cell["ci95"][1]
