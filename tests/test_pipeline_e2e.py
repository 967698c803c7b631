"""The main job end to end on the tiny model: kill it in the middle of a stage, resume, and end
with every artefact and a report; a third run reuses every stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from .conftest import REPO


def _config(tmp_path, model_dir) -> dict:
    return {
        "profile": "quick",
        "run": {"name": "e2e", "output_dir": str(tmp_path / "runs")},
        "base_model": {"name": str(model_dir)},
        # The embedded corpus (no sources), capped: the tiny tokenizer makes many short blocks.
        "corpus": {"block_size": 64, "chunk_tokens": 64, "min_chars": 40, "max_docs": 60},
        "pretrain": {
            "replay_samples": 2,
            "train": {"max_steps": 6, "batch_size": 2, "max_seq_len": 64, "save_steps": 2, "logging_steps": 1},
        },
        "tasks": {"templates_dir": str(REPO / "task_templates")},
        "sft": {"train": {"max_steps": 30, "batch_size": 2, "max_seq_len": 256, "save_steps": 3, "logging_steps": 1}},
        "reward": {
            "max_eval_pairs": 32,
            "train": {"max_steps": 4, "batch_size": 2, "max_seq_len": 256, "save_steps": 2, "logging_steps": 1},
        },
        "ppo": {
            "train": {"max_steps": 2, "batch_size": 2, "save_steps": 1},
            "rollout": {"batch_size": 2, "max_new_tokens": 8},
            "critic_warmup_steps": 1,
        },
        "eval": {"engine": "hf", "max_examples": 2, "max_new_tokens": 16},
        "serve": {"engine": "hf"},
    }


def _start(cfg_path, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.Popen([sys.executable, "-m", "domain_lm", "pipeline", "run", str(cfg_path)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_pipeline_kill_resume_report(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir)
    cfg_path = tmp_path / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "e2e"

    # 1. start, and kill -9 the whole process group once SFT has written a checkpoint
    proc = _start(cfg_path, tmp_path)
    deadline = time.time() + 900
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if list((run_dir / ".work" / "sft").glob("checkpoint-*")) and not (run_dir / "sft" / "manifest.json").exists():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    out = proc.stdout.read()
    assert killed, f"pipeline ended before it could be killed mid-SFT:\n{out[-3000:]}"
    assert (run_dir / "pretrain" / "manifest.json").is_file()  # finished stages are kept
    assert not (run_dir / "sft").exists()  # the killed stage left no artefact a later stage could pick up

    # 2. resume: finishes every stage, SFT continues from its checkpoint
    proc = _start(cfg_path, tmp_path)
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-4000:]
    for stage in ("base", "corpus", "pretrain", "sft", "reward", "ppo", "eval"):
        m = json.loads((run_dir / stage / "manifest.json").read_text())
        assert m["stage"] == stage and m["fingerprint"]
        for rel in m["artefacts"].values():
            assert (run_dir / stage / rel).exists()
    assert "unchanged, reused" in out  # base/corpus/pretrain were not redone
    report = (run_dir / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3  # self-contained plots
    md = (run_dir / "report.md").read_text()
    for title in ("Stage timeline", "Continued pretraining", "Instruction tuning", "Evaluation"):
        assert title in md

    # 3. nothing changed: every stage is reused
    proc = _start(cfg_path, tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert out.count("unchanged, reused") == 7
