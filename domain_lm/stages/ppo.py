"""Stage ``ppo``: PPO-Max (``train.ppo``) from the upstream model against the reward stage's model,
then the adapter, the merged model, the per-step log, TensorBoard events, curves and model card."""

from __future__ import annotations

import shutil
from pathlib import Path

from domain_lm.config import PipelineConfig
from domain_lm.pipeline.stage import Stage, StageContext
from domain_lm.pipeline.store import ModelCard


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    from domain_lm.core.hashing import sha256_file
    from domain_lm.data import sft_data

    rollout = config.ppo.rollout
    out = {f"prompts:{s}": sha256_file(s) for s in rollout.prompt_sources if Path(s).is_file()}
    if rollout.from_tasks:
        out.update(sft_data.data_hashes(config))
    return out


def run(ctx: StageContext) -> None:
    from domain_lm.models.loading import save_model
    from domain_lm.train.common import plot_curves
    from domain_lm.train.ppo import PLOT_KEYS, train_ppo

    upstream, policy_path = ctx.inputs.model()
    reward_path = ctx.inputs.require("reward", "Run `domain-lm reward` first.").artefact("reward_model")
    work = ctx.work_dir
    if not ctx.resume:  # a fresh run starts from empty logs and no checkpoints
        for p in list(work.glob("checkpoint-*")) + [work / "ppo_log.jsonl", work / "eval_before.json", work / "tb"]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    t = train_ppo(policy_path, reward_path, ctx.config, work, resume=ctx.resume, tb_dir=work / "tb")

    out = ctx.out
    save_model(t.state.actor, out / "model", t.state.tok, adapter_dir=out / "adapter")
    shutil.copy(work / "ppo_log.jsonl", out / "ppo_log.jsonl")
    shutil.copytree(work / "tb", out / "tb", dirs_exist_ok=True)
    for name, rel in [("model", "model"), ("adapter", "adapter"), ("log", "ppo_log.jsonl"), ("tensorboard", "tb")]:
        ctx.add_artefact(name, rel)
    if plot_curves(t.state.history, PLOT_KEYS, out / "ppo_curves.png", title="PPO-Max"):
        ctx.add_artefact("curves", "ppo_curves.png")

    res = ctx.result
    res.metrics.update(t.summary)
    res.inputs.update(data_hashes(ctx.config))
    cfg = ctx.config.ppo
    switches_on = [k for k, v in cfg.tricks.model_dump().items() if v is True]
    ctx.set_model_card(
        ModelCard(
            title="PPO-Max policy",
            base_model=str(policy_path),
            method=f"PPO-Max (LoRA r={cfg.peft.lora.r}); tricks: {', '.join(switches_on)}; buffer {cfg.rollout.buffer_size}",
            description=f"Policy from the {upstream.stage} model optimised against the reward model at {reward_path}; "
            f"KL to the reference kept under {cfg.kl_stop_bound}.",
        )
    )


STAGE = Stage(
    name="ppo",
    title="RLHF: PPO-Max",
    sections=("ppo", "tasks", "base_model"),
    outputs=("model", "adapter", "log"),
    run=run,
    data_hashes=data_hashes,
)
