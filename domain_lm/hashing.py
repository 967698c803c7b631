"""Old import path of ``domain_lm.core.hashing``, kept only until the issue-16 branches are merged (then removed)."""

from domain_lm.core.hashing import sha256_file, sha256_json

__all__ = ["sha256_file", "sha256_json"]
