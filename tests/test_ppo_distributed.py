"""PPO's DeepSpeed path on two CPU processes (torchrun): the ranks roll out different prompts but
end with identical actor weights (gradients are all-reduced), and only rank 0 logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_ppo import prompts_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = """
import json, os, sys
from pathlib import Path
import torch
from domain_lm.config import build_config
from domain_lm.train import ppo

args = json.loads(sys.argv[1])
result = ppo.train_ppo(Path(args["policy"]), Path(args["reward"]), build_config({}, args["overrides"]), Path(args["work"]))
state, summary = result.state, result.summary
lora = torch.cat([p.detach().flatten() for n, p in state.actor.named_parameters() if "lora_" in n])
texts = [h["sample"] for h in state.history]
torch.save({"lora": lora, "steps": summary["steps_done"], "texts": texts}, Path(args["work"]) / f"rank{os.environ['RANK']}.pt")
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_ppo_deepspeed_two_processes(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from domain_lm.models.loading import load_tokenizer

    # a reward model with a random head is enough to exercise the update path
    rm_dir = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(rm_dir)
    load_tokenizer(tiny_model_dir).save_pretrained(rm_dir)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = {
        "policy": str(tiny_model_dir),
        "reward": str(rm_dir),
        "work": str(tmp_path / "work"),
        "overrides": [
            f"ppo.rollout.prompt_sources=[{prompts_file(tmp_path / 'prompts.jsonl')}]",
            "ppo.rollout.from_tasks=false",
            "ppo.train.max_steps=2",
            "ppo.critic_warmup_steps=0",
            "ppo.rollout.batch_size=2",
            "ppo.train.batch_size=2",
            "ppo.rollout.max_new_tokens=6",
            "ppo.rollout.eval_prompts=2",
            "ppo.train.learning_rate=5e-3",
            "ppo.peft.lora.r=4",
            f"ppo.train.deepspeed={os.path.join(REPO, 'deploy', 'deepspeed', 'zero2.json')}",
        ],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561", str(driver), json.dumps(args)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "work" / f"rank{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2
    assert r0["texts"] != r1["texts"]  # the ranks sampled their own rollouts
    assert r0["lora"].abs().max() > 0  # the actor moved
    assert torch.allclose(r0["lora"], r1["lora"], atol=1e-6)  # ... identically on both ranks
    rows = (tmp_path / "work" / "ppo_log.jsonl").read_text().splitlines()
    assert len(rows) == 2  # rank 0 only
