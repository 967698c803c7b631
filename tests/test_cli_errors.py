"""Bad config key, missing base model, unreadable corpus path: one paragraph, non-zero exit, nothing written."""

import os
import subprocess
import sys

import pytest


def _run(args, cwd, env_extra=None):
    env = {**os.environ, "DOMAIN_LM_HOME": str(cwd / "home"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "domain_lm", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def _assert_clean_failure(proc, cwd, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert err.startswith("error:") and "\n\n" not in err  # one paragraph
    for n in needles:
        assert n in err, err
    assert not (cwd / "runs").exists()
    assert not (cwd / "home" / "models").exists()


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "task_templates").mkdir()
    return tmp_path


def test_wrong_config_key(workdir):
    cfg = workdir / "c.yaml"
    cfg.write_text("pretrain:\n  peft:\n    lora:\n      rank: 8\n")
    p = _run(["pipeline", "run", str(cfg)], workdir)
    _assert_clean_failure(p, workdir, "pretrain.peft.lora.rank", "unknown key")


def test_missing_base_model(workdir):
    p = _run(["pipeline", "run", "-s", "base_model.name=/nowhere/model"], workdir)
    _assert_clean_failure(p, workdir, "/nowhere/model", "neither a registry name")


def test_unreadable_corpus_path(workdir):
    cfg = workdir / "c.yaml"
    cfg.write_text(f"corpus:\n  sources:\n    - path: {workdir / 'missing-dir'}\n")
    p = _run(["pipeline", "run", str(cfg)], workdir)
    _assert_clean_failure(p, workdir, "missing-dir", "does not exist")


def test_missing_templates_dir(workdir):
    p = _run(["pipeline", "run", "-s", "tasks.templates_dir=/does/not/exist"], workdir)
    _assert_clean_failure(p, workdir, "tasks.templates_dir")
