"""``domain-lm ppo``: RLHF with PPO-Max from the SFT model against the reward model."""

from __future__ import annotations

import typer

from domain_lm.cli.common import ConfigOpt, ForceOpt, OverrideOpt, ResumeOpt, run_stage_command

app = typer.Typer()


@app.callback(invoke_without_command=True)
def ppo(ctx: typer.Context, config: ConfigOpt = None, overrides: OverrideOpt = None, resume: ResumeOpt = False, force: ForceOpt = False) -> None:
    """Run PPO-Max (needs the reward stage). Every trick is a ``ppo.tricks.use_*`` switch (-s ppo.tricks.use_ptx=false)."""
    if ctx.invoked_subcommand is not None:
        return
    run_stage_command("ppo", config, overrides, resume=resume, force=force)
