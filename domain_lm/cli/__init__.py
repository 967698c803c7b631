"""The ``domain-lm`` command line.

Each command group lives in its own module under ``domain_lm.cli``; this module wires them
together and turns user errors into one paragraph and a non-zero exit code.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from domain_lm.cli import base, bundle, corpus, dpo, pipeline, ppo, pretrain, reward, serve, sft, tasks
from domain_lm.cli import eval as eval_cmd
from domain_lm.core.progress import console
from domain_lm.errors import DomainLMError

app = typer.Typer(
    name="domain-lm",
    help="Turn a general open LLM into a private bank-domain model, and serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: command name -> (its typer app, help).
COMMANDS: dict[str, tuple[typer.Typer, str]] = {
    "base": (base.app, "Import and list base models (offline model store)."),
    "corpus": (corpus.app, "Build the domain corpus (clean, dedupe, scrub PII, chunk, pack)."),
    "pretrain": (pretrain.app, "Continued pretraining on the domain corpus."),
    "sft": (sft.app, "Instruction tuning on templated bank tasks."),
    "reward": (reward.app, "Preference data and the reward model."),
    "ppo": (ppo.app, "RLHF with PPO-Max."),
    "dpo": (dpo.app, "Offline preference optimisation (DPO)."),
    "eval": (eval_cmd.app, "Evaluate models on labelled task data."),
    "serve": (serve.app, "Serve task endpoints over REST (vLLM or transformers)."),
    "pipeline": (pipeline.app, "Run the whole pipeline from one config."),
    "tasks": (tasks.app, "Validate, list and render task templates."),
    "bundle": (bundle.app, "Build and verify offline model bundles."),
}

for _name, (_sub, _help) in COMMANDS.items():
    app.add_typer(_sub, name=_name, help=_help)


def _quiet_libraries(level: str) -> None:
    """The CLI shows its own rich progress; library progress bars and load reports only add noise
    (``DOMAIN_LM_LOG=INFO`` or ``DEBUG`` brings them back). Set before the libraries are imported."""
    if level.upper() in ("INFO", "DEBUG"):
        return
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    level = os.environ.get("DOMAIN_LM_LOG", "WARNING")
    _quiet_libraries(level)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except DomainLMError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
