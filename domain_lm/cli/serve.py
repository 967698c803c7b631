"""``domain-lm serve``: found through the ``domain_lm.commands`` entry point, not imported.

The service lives in the ``services`` package, which builds on ``domain_lm``; ``domain_lm`` never
imports it. The service registers its command line (``services.cli:app``) under the entry point
group ``domain_lm.commands`` (pyproject.toml), and this module hands that command to the
``domain-lm`` CLI. Without the service installed, ``domain-lm serve`` says how to get it.

``resolve_model`` stays here: which model a run, stage or store name serves is a pipeline fact.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import typer

from domain_lm.errors import DomainLMError, ModelNotFoundError

#: Entry point group through which other packages add commands to ``domain-lm``.
COMMAND_GROUP = "domain_lm.commands"


def resolve_model(spec: str) -> tuple[Path, dict[str, str]]:
    """A model directory and adapters for a model dir, adapter dir, run dir, stage dir or store name."""
    from domain_lm.models import registry
    from domain_lm.models.loading import adapter_base, is_adapter_dir
    from domain_lm.pipeline.graph import FINAL_MODEL_ORDER
    from domain_lm.pipeline.store import MANIFEST, Run, StageResult

    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return p, {}
        if is_adapter_dir(p):
            return Path(adapter_base(p)), {p.name: str(p)}
        if (p / MANIFEST).is_file():  # one stage directory
            result = StageResult.from_manifest(p, json.loads((p / MANIFEST).read_text(encoding="utf-8")))
            if result.has("model"):
                return result.artefact("model"), {}
        run = Run(p)
        for stage in FINAL_MODEL_ORDER:
            result = run.load(stage)
            if result is not None and result.has("model"):
                return result.artefact("model"), {}
        raise ModelNotFoundError(
            f"{p} is neither a model directory, an adapter directory nor a run with a finished model stage "
            f"({', '.join(FINAL_MODEL_ORDER)})."
        )
    return registry.resolve(spec), {}


def plugin_command(name: str) -> typer.Typer | None:
    """The typer app another installed package registers as ``domain-lm <name>``, if any."""
    for ep in entry_points(group=COMMAND_GROUP, name=name):
        module = sys.modules.get(ep.module)
        if module is not None and not hasattr(module, ep.attr):
            return None  # that module is importing us right now (`python -m services`): it runs its own command
        try:
            return ep.load()
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] != ep.module.split(".")[0]:
                raise  # a bug inside the plugin, not a missing plugin
    return None


def _missing() -> typer.Typer:
    sub = typer.Typer(help="Serve task endpoints (the service package is not installed).")

    @sub.callback(invoke_without_command=True)
    def _cb(ctx: typer.Context) -> None:  # noqa: ARG001
        raise DomainLMError(
            f"`domain-lm serve` comes from the service package through the {COMMAND_GROUP!r} entry point, which this "
            "installation does not register. Reinstall domain-lm (`pip install -e .` in a checkout, or the wheel), "
            "or run `python -m services`."
        )

    return sub


app = plugin_command("serve") or _missing()
