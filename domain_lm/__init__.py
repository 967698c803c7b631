"""domain-lm: turn a general open LLM into a private bank-domain model and serve it on-prem."""

import os as _os

# Air-gapped by default: nothing in this package may reach a model hub at run time.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
_os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
_os.environ.setdefault("DO_NOT_TRACK", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
