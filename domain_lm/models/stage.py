"""Pipeline stage ``base``: make sure the base model is in the store, verified."""

from __future__ import annotations

from domain_lm.config import PipelineConfig
from domain_lm.models import registry
from domain_lm.runstore import StageResult

SECTIONS = ["base_model"]
NEEDS: list[str] = []


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    return {}


def run(ctx) -> StageResult:
    cfg = ctx.config.base_model
    path = registry.resolve(cfg.name, store=cfg.store)
    stored = registry._read_stored(path)  # noqa: SLF001 - same package
    res = ctx.writer.result
    # The model stays in the store; the artefact records its absolute path.
    res.artefacts["model"] = str(path.resolve())
    res.inputs["base_model"] = stored.source_sha256 if stored else ""
    res.metrics["params"] = stored.params if stored else 0
    return res
