"""``domain-lm eval``: score models on labelled task data.

Standalone: ``domain-lm eval --model PATH --task sentiment --data fpb.jsonl --field text=text
--label-field label`` runs one template over one file through the inference engine (structured
outputs on) and prints the task's metric, counting invalid outputs as wrong. Without ``--model``
it runs the pipeline's ``eval`` stage (every model stage of the run on the held-out split, plus the
TF-IDF + logistic regression baseline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from domain_lm.cli.common import ConfigOpt, ForceOpt, OverrideOpt, config_from, run_stage_command
from domain_lm.core.progress import console
from domain_lm.errors import DataError

app = typer.Typer()


@app.callback(invoke_without_command=True)
def eval_(
    ctx: typer.Context,
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
    force: ForceOpt = False,
    model: Annotated[
        Optional[list[str]],
        typer.Option("--model", help="Model dir, or NAME=DIR (repeatable, compared side by side). An adapter dir works too."),
    ] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Template name, e.g. sentiment.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Labelled JSONL/CSV file.")] = None,
    field: Annotated[
        Optional[list[str]], typer.Option("--field", help="TEMPLATE_FIELD=COLUMN (repeatable); default: same name, or `text`.")
    ] = None,
    label_field: Annotated[str, typer.Option("--label-field", help="Column with the gold output.")] = "label",
    label_map: Annotated[Optional[list[str]], typer.Option("--label-map", help="RAW=CANONICAL (repeatable), e.g. 0=negative.")] = None,
    lang: Annotated[str, typer.Option("--lang", help="en or zh.")] = "en",
    engine: Annotated[str, typer.Option("--engine", help="auto (vLLM if installed), vllm or hf.")] = "auto",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Score only the first N records.")] = None,
    baseline_train: Annotated[
        Optional[Path], typer.Option("--baseline-train", help="Labelled file to fit the TF-IDF+LR baseline on (label tasks).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write report.json/.md/.png here.")] = None,
    templates: Annotated[Optional[Path], typer.Option("--templates", help="Task templates dir (default: the config's).")] = None,
) -> None:
    """Evaluate one labelled file (with --model), or run the pipeline's eval stage (without)."""
    if ctx.invoked_subcommand is not None:
        return
    if not model:
        if task or data:
            raise DataError(
                "--task/--data need --model (the model to evaluate). Without --model, `domain-lm eval` runs the pipeline's eval stage."
            )
        run_stage_command("eval", config, overrides, force=force)
        return
    if not (task and data):
        raise DataError("Standalone evaluation needs --task and --data (and usually --field/--label-field).")

    from domain_lm.config import TaskDataset
    from domain_lm.data.sft_data import read_table, records_from_rows
    from domain_lm.eval.harness import engine_options, evaluate_baseline, evaluate_model, resolve_kind
    from domain_lm.eval.metrics import PRIMARY, primary
    from domain_lm.eval.report import markdown_table, write_report
    from domain_lm.models.loading import is_adapter_dir
    from domain_lm.tasks import TemplateRegistry

    cfg = config_from(config, overrides)
    registry = TemplateRegistry.load(str(templates or cfg.tasks.templates_dir))
    t = registry.get(task)
    fmap = {}
    for item in field or []:
        if "=" not in item:
            raise DataError(f"--field {item!r} must be TEMPLATE_FIELD=COLUMN, e.g. --field text=sentence.")
        k, v = item.split("=", 1)
        fmap[k] = v
    lmap = dict(x.split("=", 1) for x in (label_map or []) if "=" in x)
    ds = TaskDataset(task=task, path=str(data), fields=fmap, label_field=label_field, label_map=lmap, lang=lang)
    records = records_from_rows(t, read_table(data), ds)[:limit] if limit else records_from_rows(t, read_table(data), ds)
    if not records:
        raise DataError(f"No usable records in {data} for task {task!r}.")

    entry = {"metric": t.metric, "langs": [lang], "n": len(records), "systems": {}}
    report = {"title": f"{task} on {data.name}", "engine": resolve_kind(engine), "tasks": {task: entry}}
    opts = engine_options(engine, cfg.eval.gpu_memory_utilization)
    for item in model:
        name, path = item.split("=", 1) if "=" in item and not Path(item).exists() else (Path(item).name, item)
        adapters, adapter, base = None, None, path
        if is_adapter_dir(path):  # an adapter dir: serve it on its base, as the service would
            from domain_lm.models.loading import adapter_base

            base, adapters, adapter = adapter_base(path), {name: path}, name
        scores = evaluate_model(base, {task: (t, records)}, kind=engine, adapters=adapters, adapter=adapter, **opts)[task]
        report["tasks"][task]["systems"][name] = scores
        headline = f"{PRIMARY.get(t.metric, 'score')}={primary(t.metric, scores):.4f}"
        console.print(f"[bold]{name}[/]: {headline}  invalid {scores.get('invalid', 0)}/{scores.get('n', 0)}")
    if baseline_train is not None:
        train = records_from_rows(t, read_table(baseline_train), ds.model_copy(update={"path": str(baseline_train)}))
        b = evaluate_baseline(t, train, records, seed=cfg.tasks.seed)
        if b is not None:
            report["tasks"][task]["systems"]["baseline (tf-idf+lr)"] = b
    console.print(markdown_table(report))
    if out is not None:
        paths = write_report(report, out)
        console.print(f"report -> {', '.join(str(p) for p in paths.values())}")
    else:
        numbers = {
            k: {s: {m: v for m, v in sc.items() if isinstance(v, (int, float))} for s, sc in x["systems"].items()}
            for k, x in report["tasks"].items()
        }
        console.print(json.dumps(numbers, indent=1))
