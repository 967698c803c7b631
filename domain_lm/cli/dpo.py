"""``domain-lm dpo``: Direct Preference Optimisation from the SFT model on the preference data."""

from __future__ import annotations

import typer

from domain_lm.cli.common import ConfigOpt, ForceOpt, OverrideOpt, ResumeOpt, run_stage_command

app = typer.Typer()


@app.callback(invoke_without_command=True)
def dpo(ctx: typer.Context, config: ConfigOpt = None, overrides: OverrideOpt = None, resume: ResumeOpt = False, force: ForceOpt = False) -> None:
    """Train DPO (TRL) on the same preference pairs as the reward model."""
    if ctx.invoked_subcommand is not None:
        return
    run_stage_command("dpo", config, overrides, resume=resume, force=force)
