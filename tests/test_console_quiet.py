"""A successful `domain-lm pipeline run` prints progress, results and where the report and log are;
library warnings, vLLM's engine output (its engine-core child process included) and tracebacks go
to runs/<run>/pipeline.log. Errors still reach the console as one paragraph."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO, requires_vllm

#: What a line of library noise looks like (warnings, tracebacks, vLLM log lines, progress bars).
NOISE = re.compile(r"warn|traceback|error|triton|numa|vllm|it/s\]|%\|", re.IGNORECASE)


def _run(args: list[str], cwd, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    env.pop("DOMAIN_LM_LOG", None)
    return subprocess.run([sys.executable, "-m", "domain_lm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _config(tmp_path, model_dir, **extra) -> dict:
    return {
        "run": {"name": "quiet", "output_dir": str(tmp_path / "runs")},
        "base_model": {"name": str(model_dir)},
        "corpus": {"block_size": 64, "chunk_tokens": 64, "max_docs": 30},
        "pretrain": {"eval_max_blocks": 4, "replay_samples": 2, "train": {"max_steps": 2, "batch_size": 2, "max_seq_len": 64}},
        "tasks": {"templates_dir": str(REPO / "task_templates"), "demo_tasks": ["sentiment"], "demo_langs": ["en"]},
        "sft": {"enabled": False},
        "rlhf": {"enabled": False},
        "eval": {"engine": "vllm", "max_examples": 2, "max_new_tokens": 8, "baseline": False},
        **extra,
    }


@requires_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_successful_run_prints_only_progress_and_results(tmp_path, tiny_model_dir):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_config(tmp_path, tiny_model_dir)))
    proc = _run(["pipeline", "run", str(cfg)], tmp_path, timeout=1200)
    console = proc.stdout + proc.stderr
    log = (tmp_path / "runs" / "quiet" / "pipeline.log").read_text(errors="replace")
    assert proc.returncode == 0, console[-3000:] + log[-3000:]
    assert proc.stdout == ""  # everything the user reads is on stderr (the rich console)
    noisy = [line for line in console.splitlines() if NOISE.search(line)]
    assert not noisy, noisy
    # Progress, results and where the report and the log are.
    for stage in ("base", "corpus", "pretrain", "eval"):
        assert re.search(rf"✓ {stage}\s+done", console), console
    assert "ppl_domain_before=" in console and "report: " in console and "pipeline.log" in console
    # The noise is in the log: vLLM's own lines and its engine-core child process's output, and warnings.
    assert re.search(r"warning", log, re.IGNORECASE) and "vllm" in log.lower()
    assert "EngineCore" in log or "engine_core" in log or "Loading safetensors checkpoint shards" in log  # the child's output


def test_error_after_the_log_opened_is_one_paragraph_on_the_console(tmp_path, tiny_model_dir):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_config(tmp_path, tiny_model_dir)))
    proc = _run(["pipeline", "run", str(cfg), "--until", "nosuchstage"], tmp_path, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error:") and "nosuchstage" in err, proc.stdout + proc.stderr
    assert "Traceback" not in err and "\n\n" not in err
    log = (tmp_path / "runs" / "quiet" / "pipeline.log").read_text()
    assert "Traceback" in log and "nosuchstage" in log  # the details are kept in the log


def test_capture_output_sends_fds_and_children_to_the_log_and_restores_them(tmp_path, capfd):
    from domain_lm.core.progress import capture_output, console

    log = tmp_path / "x.log"
    with capture_output(log):
        print("python stdout", file=sys.__stdout__, flush=True)  # the process's stdout (pytest swaps sys.stdout)
        os.write(2, b"fd 2 write\n")
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"], check=True)
        console.print("for the user")
    print("after")
    out, err = capfd.readouterr()
    text = log.read_text()
    for line in ("python stdout", "fd 2 write", "child out", "child err"):
        assert line in text and line not in out + err
    assert "for the user" not in text and "after" in out
    with pytest.raises(RuntimeError):
        with capture_output(log):
            raise RuntimeError("boom")
    assert "RuntimeError: boom" in log.read_text()
    assert console.file is sys.stderr  # the console is back on the process's stderr
