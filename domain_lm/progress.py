"""Old import path of ``domain_lm.core.progress``, kept only until the issue-16 branches are merged (then removed)."""

from domain_lm.core.progress import console, display, make_progress, task

__all__ = ["console", "display", "make_progress", "task"]
