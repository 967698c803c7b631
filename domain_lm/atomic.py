"""Old import path of ``domain_lm.core.atomic``, kept only until the issue-16 branches are merged (then removed)."""

from domain_lm.core.atomic import DIR_MODE, FILE_MODE, atomic_dir, write_json, write_text

__all__ = ["DIR_MODE", "FILE_MODE", "atomic_dir", "write_json", "write_text"]
