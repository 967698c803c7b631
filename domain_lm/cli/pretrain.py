"""``domain-lm pretrain``: continued pretraining on the domain corpus.

Single process: ``domain-lm pretrain -c run.yaml``. Several processes / nodes: start the same
command under a launcher (see deploy/launch/), e.g.
``deepspeed --no_local_rank --num_gpus 2 --module domain_lm pretrain -c run.yaml -s pretrain.train.deepspeed=deploy/deepspeed/zero2.json``.
Rank 0 runs the stage through the run store (and writes it); the other ranks join the same training.
"""

from __future__ import annotations

import typer

from domain_lm.cli.common import ConfigOpt, ForceOpt, OverrideOpt, ResumeOpt, config_from, run_stage_command

app = typer.Typer()


@app.callback(invoke_without_command=True)
def pretrain(
    ctx: typer.Context,
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Continued pretraining (LoRA or full) with replay, checkpoints and perplexity before/after."""
    if ctx.invoked_subcommand is not None:
        return
    from domain_lm.stages.pretrain import run_worker
    from domain_lm.train.pretrain import world_rank

    rank, world = world_rank()
    if world > 1 and rank != 0:
        run_worker(config_from(config, overrides), resume=resume)
        return
    run_stage_command("pretrain", config, overrides, resume=resume, force=force)
