"""``domain-lm sft``: instruction tuning on templated bank tasks; ``domain-lm sft build``: the data.

``domain-lm sft -c run.yaml`` trains (the ``sft`` stage, from the pretrain output if present, else
the base model). ``domain-lm sft build --out DIR`` only renders the training data, so it can be
inspected before spending compute: ``train.jsonl``, ``eval.jsonl``, ``eval_records.jsonl``, ``stats.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from domain_lm.cli.common import ConfigOpt, OverrideOpt, config_from, stage_app
from domain_lm.core.progress import console
from domain_lm.errors import DataError

app = stage_app("sft", "Train the SFT stage (LoRA on answer tokens only), merge it, and write its model card.")


def _dataset_override(task: str, data: Path, fields: list[str], label_field: str, label_map: list[str], lang: str) -> str:
    fmap = {}
    for item in fields:
        if "=" not in item:
            raise DataError(f"--field {item!r} must be TEMPLATE_FIELD=COLUMN, e.g. --field text=sentence.")
        k, v = item.split("=", 1)
        fmap[k] = v
    lmap = dict(x.split("=", 1) for x in label_map if "=" in x)
    dataset = {"task": task, "path": str(data), "fields": fmap, "label_field": label_field, "label_map": lmap, "lang": lang}
    return "tasks.datasets=" + json.dumps([dataset])


@app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", help="Directory for train.jsonl / eval.jsonl / eval_records.jsonl / stats.json.")],
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
    task: Annotated[Optional[str], typer.Option("--task", help="With --data: the template of that file (replaces tasks.datasets).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="A labelled JSONL/CSV file for --task.")] = None,
    field: Annotated[Optional[list[str]], typer.Option("--field", help="TEMPLATE_FIELD=COLUMN (repeatable).")] = None,
    label_field: Annotated[str, typer.Option("--label-field", help="Column holding the gold output.")] = "label",
    label_map: Annotated[Optional[list[str]], typer.Option("--label-map", help="RAW=CANONICAL (repeatable).")] = None,
    lang: Annotated[str, typer.Option("--lang", help="Language of --data (en or zh).")] = "en",
    model: Annotated[
        Optional[str], typer.Option("--model", help="Tokenizer for the length filter; default: the config's base model.")
    ] = None,
) -> None:
    """Render SFT examples through the task templates (the service's prompts) without training."""
    from domain_lm.data.sft_data import build_sft_data
    from domain_lm.models import registry
    from domain_lm.models.loading import load_tokenizer

    items = list(overrides or [])
    if (task is None) != (data is None):
        raise DataError("Give --task and --data together (or neither, to use the config's tasks.datasets / the demo examples).")
    if task and data:
        items.append(_dataset_override(task, data, field or [], label_field, label_map or [], lang))
    cfg = config_from(config, items)
    local = model and Path(model).exists()
    tok = load_tokenizer(model if local else registry.resolve(model or cfg.base_model.name, store=cfg.base_model.store))
    stats = build_sft_data(cfg, tok, out)
    per_task = ", ".join(f"{t}={n}" for t, n in sorted(stats.train_examples.items()))
    console.print(
        f"[bold green]sft build[/]: {sum(stats.train_examples.values())} training examples ({per_task}), "
        f"{sum(stats.eval_records.values())} held-out records, {stats.few_shot} few-shot, "
        f"{stats.duplicates} duplicates and {stats.too_long} over-length dropped -> {out}"
    )
