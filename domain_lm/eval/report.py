"""Side-by-side comparison of stages: one JSON, one markdown table, one bar plot per metric.

Input shape (what ``harness`` and the eval stage produce)::

    {"tasks": {task: {"metric": "classification", "lang": "en",
                      "systems": {"base": scores, "sft": scores, "baseline (tf-idf+lr)": scores}}}}

where ``scores`` is a dict from ``metrics.score`` (optionally with ``latency_ms``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domain_lm.core import atomic
from domain_lm.core.figures import pyplot, save_figure
from domain_lm.eval.metrics import PRIMARY, primary

#: Secondary numbers worth a column in the markdown table, per metric family.
EXTRA = {
    "classification": ["accuracy", "macro_f1"],
    "ner": ["precision", "recall"],
    "extraction": ["numeric_match", "field_accuracy"],
    "rouge": ["rouge1", "rouge2"],
}


def systems_order(report: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for t in report["tasks"].values():
        for s in t["systems"]:
            if s not in seen:
                seen.append(s)
    return seen


def markdown_table(report: dict[str, Any]) -> str:
    """Rows = task x system; the headline metric first, then secondary metrics and invalid outputs."""
    lines = ["| task | metric | system | score | 95% interval | other | invalid / n |", "|---|---|---|---:|---|---|---:|"]
    for task, t in report["tasks"].items():
        metric = t["metric"]
        for system, s in t["systems"].items():
            if "skipped" in s:
                lines.append(f"| {task} | {metric} | {system} | – | | skipped: {s['skipped']} | |")
                continue
            others = ", ".join(f"{k}={s[k]:.3f}" for k in EXTRA.get(metric, []) if isinstance(s.get(k), (int, float)))
            inv = f"{s.get('invalid', 0)} / {s.get('n', 0)}"
            ci = f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" if isinstance(s.get("ci95"), list) else ""
            lines.append(f"| {task} | {PRIMARY.get(metric, metric)} | {system} | {primary(metric, s):.3f} | {ci} | {others} | {inv} |")
    return "\n".join(lines) + "\n"


def engines_text(report: dict[str, Any]) -> str:
    """How the answers were produced: engines, what each scored, time and throughput."""
    engines = report.get("engines") or []
    if not engines:
        return ""
    lines = [
        f"{report.get('answers', 0)} answers in {report.get('seconds', 0):.0f}s ({report.get('answers_per_s') or 0:.1f} answers/s), "
        f"{sum(not e.get('reused') for e in engines)} {report.get('engine', '')} engine(s):",
        "",
    ]
    for e in engines:
        how = "weights loaded into the same engine" if e.get("reused") else "engine started"
        lines.append(
            f"- `{e['model']}` model, scoring {', '.join(e['systems'])}: {how} in {e['start_s']:.0f}s, "
            f"{e['answers']} answers in {e['answer_s']:.0f}s ({e['answers_per_s'] or 0:.1f}/s)"
        )
    return "\n".join(lines) + "\n"


def bar_plot(report: dict[str, Any], path: str | Path) -> Path | None:
    """Grouped bars: one group per task, one bar per system, height = the task's headline metric."""
    plt = pyplot()

    tasks = list(report["tasks"])
    systems = systems_order(report)
    if not tasks or not systems:
        return None
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * max(1, len(systems) / 2)), 3.6))
    for i, system in enumerate(systems):
        xs, ys = [], []
        for j, task in enumerate(tasks):
            s = report["tasks"][task]["systems"].get(system)
            if s is None or "skipped" in s:
                continue
            xs.append(j + (i - (len(systems) - 1) / 2) * width)
            ys.append(primary(report["tasks"][task]["metric"], s))
        bars = ax.bar(xs, ys, width=width, label=system)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n({PRIMARY.get(report['tasks'][t]['metric'], '')})" for t in tasks], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def write_report(report: dict[str, Any], out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    atomic.write_text(paths["json"], json.dumps(report, indent=2, ensure_ascii=False, default=str))
    title = report.get("title", "Evaluation")
    extra = engines_text(report)
    atomic.write_text(paths["markdown"], f"# {title}\n\n" + markdown_table(report) + (f"\n{extra}" if extra else ""))
    png = bar_plot(report, out / f"{stem}.png")
    if png is not None:
        paths["plot"] = png
    return paths
