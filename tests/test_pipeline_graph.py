"""The stage graph: one place for the order, the model-stage order and what each stage reads; the
runner's input selection and its check of a stage's declared outputs."""

from __future__ import annotations

import json

import pytest

from domain_lm.config import build_config
from domain_lm.errors import DomainLMError
from domain_lm.pipeline import graph
from domain_lm.pipeline.stage import Stage, StageInputs
from domain_lm.pipeline.store import MANIFEST, Run, StageResult


@pytest.mark.parametrize(
    ("overrides", "stages"),
    [
        ([], ["base", "corpus", "pretrain", "sft", "reward", "ppo", "eval"]),
        (["rlhf.algorithm=dpo"], ["base", "corpus", "pretrain", "sft", "dpo", "eval"]),
        (["rlhf.algorithm=both"], ["base", "corpus", "pretrain", "sft", "reward", "ppo", "dpo", "eval"]),
        (["pretrain.enabled=false", "rlhf.enabled=false", "eval.enabled=false"], ["base", "sft"]),
    ],
)
def test_plan_follows_the_config(overrides, stages):
    assert graph.plan(build_config({}, overrides)) == stages


def test_model_stage_order_is_derived_once():
    assert graph.MODEL_STAGES == ("base", "pretrain", "sft", "ppo", "dpo")
    assert graph.FINAL_MODEL_ORDER == ("ppo", "dpo", "sft", "pretrain", "base")
    assert graph.NODES["sft"].model_from == ("pretrain", "base")
    assert graph.NODES["ppo"].upstream == ("sft", "pretrain", "base", "reward")
    assert graph.NODES["eval"].upstream == graph.MODEL_STAGES


def test_every_stage_reads_only_earlier_stages():
    order = list(graph.STAGE_NAMES)
    for node in graph.PIPELINE:
        assert set(node.model_from) <= set(graph.MODEL_STAGES), node.stage.name
        for upstream in node.upstream:
            assert order.index(upstream) < order.index(node.stage.name), (node.stage.name, upstream)


def _fake_result(run_root, stage: str, with_model: bool = True) -> StageResult:
    d = run_root / stage
    (d / "model").mkdir(parents=True)
    r = StageResult(stage=stage, path=d, fingerprint=f"fp-{stage}", artefacts={"model": "model"} if with_model else {})
    (d / MANIFEST).write_text(json.dumps(r.to_manifest()))
    return r


def test_inputs_pick_the_most_refined_model_present(tmp_path):
    from domain_lm.pipeline.run import stage_inputs

    run = Run(tmp_path / "r")
    _fake_result(run.root, "base")
    inputs = stage_inputs("reward", run)
    assert inputs.model()[0].stage == "base"
    _fake_result(run.root, "sft")
    inputs = stage_inputs("reward", run)
    assert inputs.model()[0].stage == "sft" and set(inputs.results) == {"sft", "base"}
    with pytest.raises(DomainLMError, match="needs the reward stage"):
        stage_inputs("ppo", run).require("reward", "Run `domain-lm reward` first.")
    with pytest.raises(DomainLMError, match="needs a model"):
        StageInputs(stage="sft", model_from=("pretrain", "base")).model()


def test_unknown_stage_names_the_stages():
    with pytest.raises(DomainLMError, match="stages are: base, corpus, pretrain"):
        graph.node("sftt")


def test_a_stage_that_skips_a_declared_output_writes_nothing(tmp_path, monkeypatch):
    from domain_lm.pipeline.run import run_stage

    broken = graph.Node(Stage(name="base", title="Base model", sections=("base_model",), outputs=("model",), run=lambda ctx: None))
    monkeypatch.setattr(graph, "NODES", {**graph.NODES, "base": broken})
    cfg = build_config({"run": {"output_dir": str(tmp_path), "name": "r"}})
    with pytest.raises(RuntimeError, match="declared outputs"):
        run_stage("base", cfg)
    assert Run.from_config(cfg).load("base") is None


def test_report_sections_are_the_stage_titles(tmp_path):
    from domain_lm.pipeline.report import build_markdown

    run = Run(tmp_path / "r")
    for stage in ("base", "sft"):
        _fake_result(run.root, stage)
    text, _ = build_markdown(run, None)
    assert "## Base model" in text and "## Instruction tuning (SFT)" in text
