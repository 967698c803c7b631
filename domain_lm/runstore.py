"""Old import path of ``domain_lm.pipeline.store``, kept only until the issue-16 branches are merged (then removed)."""

from domain_lm.pipeline.store import MANIFEST, Run, StageResult, StageWriter

__all__ = ["MANIFEST", "Run", "StageResult", "StageWriter"]
