"""Thin stage glue: one module per pipeline stage, each exporting ``STAGE`` (a ``pipeline.stage.Stage``).

A stage reads its inputs from the context, calls the trainer or builder that does the work
(``domain_lm.train``, ``domain_lm.data``, ``domain_lm.eval``) and records artefacts, metrics and
its model card. The order of the stages and what each reads are in ``domain_lm.pipeline.graph``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from domain_lm.config import PipelineConfig
    from domain_lm.pipeline.store import StageResult


def run_stage(name: str, config: "PipelineConfig", **kwargs: Any) -> "tuple[StageResult, bool]":
    """Old entry point, kept only until the issue-16 branches are merged: use
    ``domain_lm.pipeline.run.run_stage``."""
    from domain_lm.pipeline.run import run_stage as _run_stage

    return _run_stage(name, config, **kwargs)
