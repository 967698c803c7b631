"""The eval stage's engine on the REAL vLLM CPU engine with the tiny model: a stack of LoRA stages,
combined into one adapter on the base, answers exactly as the stack's merged model does, and so
does the engine after loading the merged weights in place."""

from __future__ import annotations

import pytest

from .conftest import requires_vllm
from .test_eval_engines import _lora

pytestmark = [pytest.mark.vllm, requires_vllm]

PROMPTS = ["The bank", "Loan demand rose in", "Quarterly fee income", "The regulator fined", "Deposits"]


def _greedy(engine, adapter=None):
    from domain_lm.inference import GenerationRequest

    reqs = [GenerationRequest(prompt=p, max_tokens=8, adapter=adapter) for p in PROMPTS]
    return [r.text for r in engine.generate_batch(reqs)]


def test_combined_stack_on_one_engine_equals_the_merged_model(tiny_model_dir, tmp_path):
    from domain_lm.eval.engines import StageModel, plan_engines
    from domain_lm.eval.harness import engine_options
    from domain_lm.inference import create_engine

    pre = _lora(tiny_model_dir, tmp_path / "pretrain", 0)
    sft = _lora(pre / "model", tmp_path / "sft", 1)
    stages = [StageModel("base", tiny_model_dir), StageModel("pretrain", pre / "model", pre / "adapter", "base"),
              StageModel("sft", sft / "model", sft / "adapter", "pretrain")]
    (group,) = plan_engines(stages)
    adapters = group.adapter_dirs(tmp_path / "combined")
    # float32: the stack of adapters and the merged weights agree exactly only without bf16 rounding
    # (bf16 is the default on an AMX CPU, where the two differ by rounding alone).
    opts = {**engine_options("vllm", 0.05), "max_model_len": 512, "dtype": "float32"}
    engine = create_engine(group.model, kind="vllm", adapters={k: str(v) for k, v in adapters.items()}, **opts)
    try:
        via_adapters = {s: _greedy(engine, s if s != "base" else None) for s in ("base", "pretrain", "sft")}
        # the engine keeps prompt prefixes of one adapter apart from another's: asking again, interleaved, changes nothing
        assert _greedy(engine, "sft") == via_adapters["sft"] and _greedy(engine) == via_adapters["base"]
        # the other way to score a stage on the same engine: its merged weights loaded in place
        engine.load_weights(sft / "model")
        swapped = _greedy(engine)
    finally:
        engine.close()
    assert swapped == via_adapters["sft"]
    merged = create_engine(sft / "model", kind="vllm", **opts)
    try:
        assert _greedy(merged) == via_adapters["sft"]
    finally:
        merged.close()
    assert via_adapters["sft"] != via_adapters["base"]  # the adapters really change the answers
