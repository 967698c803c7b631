"""domain-lm: turn a general open LLM into a private bank-domain model and serve it on-prem."""

import os as _os

#: Air-gapped by default: nothing in this package may reach a model hub or send telemetry at run
#: time. Set here, the package entry, so every entry point (CLI, service, library use) has it
#: before transformers, datasets or vLLM are imported. An explicit environment value wins.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in OFFLINE_ENV.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
