"""Inference engines: one interface, a vLLM implementation, a transformers fallback and a fake.

    engine = create_engine(model_path, kind="auto", adapters={"name": "adapter_dir"})
    result = await engine.generate(GenerationRequest(messages=[...], choices=["yes", "no"]))
    results = engine.generate_batch([...])   # sync, batched
    engine.close()
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Literal

from domain_lm.inference.base import (
    Engine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    add_adapter,
    check_adapter,
    encode_prompt,
    render_prompt,
    stream_results,
)

__all__ = [
    "Engine",
    "EngineError",
    "GenerationRequest",
    "GenerationResult",
    "add_adapter",
    "check_adapter",
    "create_engine",
    "encode_prompt",
    "render_prompt",
    "stream_results",
    "vllm_available",
]

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def create_engine(
    model_path: str | Path,
    kind: Literal["auto", "vllm", "hf", "fake"] = "auto",
    adapters: dict[str, str | Path] | None = None,
    **opts: Any,
) -> Engine:
    """Build an engine for a model directory.

    ``kind="auto"`` picks vLLM when it is installed, else the transformers fallback. ``opts`` go to
    the engine (vLLM: ``gpu_memory_utilization``, ``max_model_len``, ``dtype``, ``max_num_seqs``,
    ``max_lora_rank``...; hf: ``max_batch_size``, ``json_retries``).
    """
    adapters = {k: str(v) for k, v in (adapters or {}).items()}
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
        log.info("engine kind auto -> %s", kind)
    if kind == "vllm":
        from domain_lm.inference.vllm_engine import VllmEngine

        return VllmEngine(model_path, adapters=adapters, **opts)
    if kind == "hf":
        from domain_lm.inference.hf_engine import HFEngine

        return HFEngine(model_path, adapters=adapters, **opts)
    if kind == "fake":
        from domain_lm.inference.fake import FakeEngine

        return FakeEngine(model_name=str(model_path), adapters=adapters, **opts)
    raise EngineError(f"Unknown engine kind {kind!r}; use auto, vllm or hf.")
