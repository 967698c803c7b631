"""Read-only views of the run store for the console: runs, their stages, reports and eval tables.

Everything here takes the runs directory as an argument and never writes; names coming from a URL
are checked to be plain directory names inside it (no path traversal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domain_lm.eval.metrics import PRIMARY, primary
from domain_lm.pipeline.store import Run

REPORT_HTML = "report.html"
EVAL_STAGE = "eval"


class RunNotFound(LookupError):
    """No run (or no such file in a run) under the runs directory."""


def _safe_child(root: Path, name: str) -> Path:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name in ("..", "."):
        raise RunNotFound(f"not a run name: {name!r}")
    path = root / name
    if not path.is_dir():
        raise RunNotFound(f"no run {name!r} in {root}")
    return path


def list_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """One summary per run directory, newest first (by last finished stage, else directory mtime)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        stages = Run(d).stages()
        finished = max((s.finished_at for s in stages), default=0.0) or d.stat().st_mtime
        out.append(
            {
                "name": d.name,
                "stages": [s.stage for s in stages],
                "finished_at": finished,
                "has_report": (d / REPORT_HTML).is_file(),
                "has_eval": bool(eval_tables(d)),
            }
        )
    return sorted(out, key=lambda r: r["finished_at"], reverse=True)


def run_detail(runs_dir: str | Path, name: str) -> dict[str, Any]:
    """Stages (metrics, duration) and evaluation tables of one run."""
    root = _safe_child(Path(runs_dir), name)
    stages = [
        {
            "stage": s.stage,
            "duration_s": round(s.finished_at - s.started_at, 1),
            "finished_at": s.finished_at,
            "metrics": {k: v for k, v in s.metrics.items() if isinstance(v, (int, float, str, bool))},
        }
        for s in Run(root).stages()
    ]
    return {"name": name, "has_report": (root / REPORT_HTML).is_file(), "stages": stages, "eval": eval_tables(root)}


def report_file(runs_dir: str | Path, name: str) -> Path:
    path = _safe_child(Path(runs_dir), name) / REPORT_HTML
    if not path.is_file():
        raise RunNotFound(f"run {name!r} has no {REPORT_HTML} yet (it is written when the pipeline finishes)")
    return path


def eval_tables(run_root: Path) -> list[dict[str, Any]]:
    """Every comparison report (``{"tasks": {...}}`` JSON) under ``<run>/eval/``, as flat tables.

    Each table: ``{"file", "systems", "rows": [{"task", "metric", "headline", "lang", "scores": {system: {...}}}]}``
    with the headline metric computed the same way as the markdown report (``eval.metrics.primary``).
    """
    eval_dir = run_root / EVAL_STAGE
    if not eval_dir.is_dir():
        return []
    tables = []
    for path in sorted(eval_dir.rglob("*.json")):
        if path.name == "manifest.json":
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
            continue
        tables.append(_table(path.relative_to(run_root).as_posix(), data))
    return tables


def _table(file: str, report: dict[str, Any]) -> dict[str, Any]:
    systems: list[str] = []
    rows = []
    for task, t in report["tasks"].items():
        if not isinstance(t, dict):
            continue
        metric = t.get("metric", "")
        scores = {}
        for system, s in (t.get("systems") or {}).items():
            if system not in systems:
                systems.append(system)
            if not isinstance(s, dict):
                continue
            if "skipped" in s:
                scores[system] = {"skipped": str(s["skipped"])}
                continue
            scores[system] = {
                "score": primary(metric, s),
                "n": s.get("n"),
                "invalid": s.get("invalid"),
                "latency_ms": s.get("latency_ms"),
            }
        rows.append({"task": task, "metric": metric, "headline": PRIMARY.get(metric, metric), "lang": t.get("lang"), "scores": scores})
    return {"file": file, "systems": systems, "rows": rows}
