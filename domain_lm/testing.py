"""Old import path of ``domain_lm.models.tiny``, kept only until the issue-16 branches are merged (then removed)."""

from domain_lm.models.tiny import build_tiny_model

__all__ = ["build_tiny_model"]
