"""Run store: stages appear atomically with manifest, config and model card."""

import json

import pytest

from domain_lm.config import build_config
from domain_lm.pipeline.store import ModelCard, Run


def test_stage_written_with_manifest_config_and_card(tmp_path):
    cfg = build_config({"run": {"output_dir": str(tmp_path), "name": "r"}})
    run = Run.from_config(cfg)
    with run.writing("sft", cfg) as w:
        (w.path / "adapter").mkdir()
        (w.path / "adapter" / "w.bin").write_bytes(b"x")
        w.add_artefact("adapter", "adapter")
        w.result.metrics["loss"] = 0.5
        w.result.inputs["data"] = "ab" * 32
        w.model_card = ModelCard(title="sft", base_model="tiny", method="lora")
    r = run.load("sft")
    assert r is not None and r.metrics["loss"] == 0.5
    assert r.artefact("adapter").joinpath("w.bin").read_bytes() == b"x"
    assert (tmp_path / "r" / "sft" / "config.yaml").is_file()
    card = (tmp_path / "r" / "sft" / "MODEL_CARD.md").read_text()
    assert "tiny" in card and "loss" in card
    assert json.loads((tmp_path / "r" / "sft" / "manifest.json").read_text())["stage"] == "sft"


def test_failed_stage_leaves_nothing_and_keeps_previous(tmp_path):
    run = Run(tmp_path / "r")
    with run.writing("corpus") as w:
        (w.path / "a.txt").write_text("first")
        w.add_artefact("a", "a.txt")
    with pytest.raises(RuntimeError):
        with run.writing("corpus") as w:
            (w.path / "a.txt").write_text("half-written")
            raise RuntimeError("killed")
    r = run.load("corpus")
    assert r.artefact("a").read_text() == "first"
    leftovers = [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".corpus")]
    assert leftovers == []


def test_incomplete_stage_is_not_loaded(tmp_path):
    run = Run(tmp_path / "r")
    (tmp_path / "r" / "pretrain").mkdir(parents=True)  # a directory without manifest
    assert run.load("pretrain") is None
    assert run.stages() == []


def test_missing_artefact_is_an_error(tmp_path):
    run = Run(tmp_path / "r")
    with pytest.raises(FileNotFoundError):
        with run.writing("x") as w:
            w.add_artefact("model", "model")
    assert run.load("x") is None


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """Artefacts are readable by the user a service runs as (not mkstemp's private 0600/0700)."""
    import os
    import stat

    from domain_lm.core import atomic

    old = os.umask(0o022)
    try:
        import importlib

        importlib.reload(atomic)
        atomic.write_text(tmp_path / "a.txt", "x")
        with atomic.atomic_dir(tmp_path / "stage") as d:
            (d / "f").write_text("y")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "stage").stat().st_mode) == 0o755
    finally:
        os.umask(old)
        importlib.reload(atomic)
