"""``domain-lm reward``: train the reward model; ``domain-lm reward build``: preference data only.

``domain-lm reward build --source hh.jsonl --source ranked.jsonl --out pairs.jsonl`` imports
pair/ranked/HH files and (unless ``--no-tasks``) adds bank-task pairs built from the labelled task
data, writing one JSONL of ``{"prompt","chosen","rejected","kind",...}`` that can be inspected and
then listed in ``reward.preference_sources``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from domain_lm.cli.common import ConfigOpt, OverrideOpt, config_from, stage_app
from domain_lm.core.progress import console

app = stage_app("reward", "Train the reward model (Bradley-Terry) on the configured preference data.")


@app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", help="Output JSONL of preference pairs.")],
    source: Annotated[Optional[list[Path]], typer.Option("--source", help="Pair / ranked / HH file (repeatable).")] = None,
    tasks: Annotated[bool, typer.Option("--tasks/--no-tasks", help="Add bank-task pairs from the labelled task data.")] = True,
    sample_k: Annotated[
        int, typer.Option("--sample-k", help="Also sample K answers per task prompt from --model, ranked by the task metric.")
    ] = 0,
    model: Annotated[Optional[Path], typer.Option("--model", help="Model to sample from (with --sample-k).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many pairs per source file.")] = None,
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
) -> None:
    """Build preference pairs without training."""
    import random

    from domain_lm.data import preference as pref
    from domain_lm.errors import DataError

    cfg = config_from(config, overrides)
    pairs: list[pref.PreferencePair] = []
    for src in source or []:
        pairs += pref.load_preferences(src, limit=limit)
    if tasks:
        from domain_lm.data.records import load_split

        split = load_split(cfg)
        train = split.train
        pairs += pref.task_pairs(train, split.templates, seed=cfg.tasks.seed)
        if sample_k > 0:
            if model is None:
                raise DataError("--sample-k needs --model (the SFT model directory to sample from).")
            from domain_lm.inference import create_engine

            engine = create_engine(str(model), kind="hf")
            try:
                sample = random.Random(cfg.tasks.seed).sample(train, min(cfg.reward.sample_records, len(train)))
                pairs += pref.sampled_pairs(sample, split.templates, engine, k=sample_k, seed=cfg.tasks.seed)
            finally:
                engine.close()
    if not pairs:
        raise DataError("No pairs built: give --source files, or keep --tasks with labelled task data.")
    n = pref.save_pairs(pairs, out)
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    console.print(f"[green]ok[/] {n} pairs -> {out}  (" + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) + ")")
