"""Old import path of ``domain_lm.pipeline.report``, kept only until the issue-16 branches are merged (then removed)."""

from domain_lm.pipeline.report import build_markdown, write_report

__all__ = ["build_markdown", "write_report"]
