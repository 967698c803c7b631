"""The ``domain-lm`` command line.

Each command group lives in its own module under ``domain_lm.cli``; this module wires them
together and turns user errors into one paragraph and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from domain_lm.errors import DomainLMError
from domain_lm.progress import console

app = typer.Typer(
    name="domain-lm",
    help="Turn a general open LLM into a private bank-domain model, and serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: command name -> (module, help). Each module exposes a ``typer.Typer`` named ``app``.
COMMANDS: dict[str, tuple[str, str]] = {
    "base": ("domain_lm.cli.base", "Import and list base models (offline model store)."),
    "corpus": ("domain_lm.cli.corpus", "Build the domain corpus (clean, dedupe, scrub PII, chunk, pack)."),
    "pretrain": ("domain_lm.cli.pretrain", "Continued pretraining on the domain corpus."),
    "sft": ("domain_lm.cli.sft", "Instruction tuning on templated bank tasks."),
    "reward": ("domain_lm.cli.reward", "Preference data and the reward model."),
    "ppo": ("domain_lm.cli.ppo", "RLHF with PPO-Max."),
    "dpo": ("domain_lm.cli.dpo", "Offline preference optimisation (DPO)."),
    "eval": ("domain_lm.cli.eval", "Evaluate models on labelled task data."),
    "serve": ("domain_lm.cli.serve", "Serve task endpoints over REST (vLLM or transformers)."),
    "pipeline": ("domain_lm.cli.pipeline", "Run the whole pipeline from one config."),
    "tasks": ("domain_lm.cli.tasks", "Validate, list and render task templates."),
    "bundle": ("domain_lm.cli.bundle", "Build and verify offline model bundles."),
}


def _not_available(name: str, help_text: str) -> typer.Typer:
    sub = typer.Typer(help=help_text + " (not available yet)")

    @sub.callback(invoke_without_command=True)
    def _cb(ctx: typer.Context) -> None:  # noqa: ARG001
        raise DomainLMError(f"`domain-lm {name}` is not available yet in this build.")

    return sub


for _name, (_module, _help) in COMMANDS.items():
    try:
        _sub = importlib.import_module(_module).app
    except ModuleNotFoundError as _e:
        if not (_e.name or "").startswith("domain_lm"):
            raise
        _sub = _not_available(_name, _help)
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
