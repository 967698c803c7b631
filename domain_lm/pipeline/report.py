"""The run report: ``runs/<run>/report.md`` and a single self-contained ``report.html``.

It opens with the eval stage's scorecard (every task x stage with 95% intervals and a verdict per
task), then the stage timeline and the details, assembled from what the stages wrote (manifests,
metrics, plots, per-stage ``report.md``, model cards), so a stage that adds a plot or a table shows
up here without changes.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

from domain_lm.config import PipelineConfig
from domain_lm.core import atomic
from domain_lm.core.figures import pyplot, save_figure
from domain_lm.pipeline.graph import NODES
from domain_lm.pipeline.store import Run, StageResult

#: Files under a stage directory that are not report material (weights, checkpoints).
_SKIP_DIRS = {"model", "adapter", "checkpoints", "tb", "data", "shards"}


def _images(stage: StageResult) -> list[Path]:
    out = []
    for p in sorted(stage.path.rglob("*.png")):
        rel = p.relative_to(stage.path).parts
        if not any(part in _SKIP_DIRS or part.startswith("checkpoint") for part in rel[:-1]):
            out.append(p)
    return out


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def timeline_plot(stages: list[StageResult], path: Path) -> Path | None:
    if not stages:
        return None
    plt = pyplot()

    t0 = min(s.started_at for s in stages)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(stages) + 1))
    for i, s in enumerate(stages):
        ax.barh(i, max(s.finished_at - s.started_at, 0.5), left=s.started_at - t0, color="#3b7dd8")
        ax.text(s.finished_at - t0, i, f" {s.finished_at - s.started_at:.0f}s", va="center", fontsize=8)
    ax.set_yticks(range(len(stages)), [s.stage for s in stages])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first stage started")
    ax.set_title("Stage timeline")
    return save_figure(fig, path)


def scorecard(run: Run) -> dict[str, Any] | None:
    """The scorecard the run's eval stage wrote (None before evaluation, or from an older run)."""
    result = run.load("eval")
    if result is None or not result.has("report"):
        return None
    try:
        card = json.loads(result.artefact("report").read_text(encoding="utf-8")).get("scorecard")
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and card.get("rows") else None


def scorecard_lines(run: Run) -> list[str]:
    """The scorecard, one line per task, for the end of ``pipeline run`` (empty without one)."""
    from domain_lm.eval.scorecard import compact_lines

    card = scorecard(run)
    return ["scorecard (score ± half the 95% interval):", *("  " + line for line in compact_lines(card))] if card else []


def build_markdown(run: Run, config: PipelineConfig | None) -> tuple[str, list[Path]]:
    """The report as markdown (image links relative to the run dir) and the images it uses."""
    stages = run.stages()
    images: list[Path] = []
    lines = [f"# domain-lm run report: {run.root.name}", ""]
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    if config is not None:
        lines.append(f"Profile **{config.profile}**, base model **{config.base_model.name}**, written {now}.")
    card = scorecard(run)
    if card is not None:
        from domain_lm.eval.scorecard import markdown

        lines += ["", "## Scorecard", "", markdown(card).strip()]
    lines += ["", "## Stage timeline", "", "| stage | started | duration | fingerprint |", "|---|---|---|---|"]
    for s in stages:
        started = dt.datetime.fromtimestamp(s.started_at).strftime("%H:%M:%S")
        lines.append(f"| {s.stage} | {started} | {s.finished_at - s.started_at:.1f}s | `{s.fingerprint[:12]}` |")
    tl = timeline_plot(stages, run.root / "timeline.png")
    if tl:
        images.append(tl)
        lines += ["", f"![timeline]({tl.relative_to(run.root)})"]
    for s in stages:
        lines += ["", f"## {NODES[s.stage].stage.title if s.stage in NODES else s.stage}", ""]
        sub = s.path / "report.md"
        referenced = ""
        if sub.is_file():
            referenced = sub.read_text(encoding="utf-8").strip()
            # demote the stage report's headings under this section
            lines += [("##" + ln if ln.startswith("#") else ln) for ln in referenced.splitlines()]
            lines.append("")
        scalars = {k: v for k, v in s.metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if referenced:
            # the stage's own report already shows its metrics (per-task keys "task/system/metric"
            # are its evaluation table): list only what it leaves out
            scalars = {k: v for k, v in scalars.items() if "/" not in k and f"| {k} |" not in referenced}
        if scalars:
            lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()]
        for img in _images(s):
            images.append(img)
            if img.name not in referenced:
                lines += ["", f"![{s.stage}: {img.stem}]({img.relative_to(run.root)})"]
    final = next((s for s in reversed(stages) if (s.path / "MODEL_CARD.md").is_file()), None)
    if final is not None:
        lines += ["", "## Model card (final model)", ""]
        card = (final.path / "MODEL_CARD.md").read_text(encoding="utf-8")
        lines += [("##" + ln if ln.startswith("#") else ln) for ln in card.splitlines()]
    return "\n".join(lines) + "\n", images


def _to_html(markdown_text: str, run_root: Path, stage_dirs: list[Path]) -> str:
    import markdown as md

    body = md.markdown(markdown_text, extensions=["tables", "fenced_code"])

    # Inline every image so the HTML is one self-contained file (air-gapped viewing, e-mail).
    def inline(src: str) -> str:
        for base in [run_root, *stage_dirs]:
            p = base / src
            if p.is_file():
                return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()
        return src

    import re

    body = re.sub(r'src="([^"]+\.png)"', lambda m: f'src="{inline(html.unescape(m.group(1)))}"', body)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}"
        "th{background:#f3f5f8}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}code{background:#f5f5f5}"
        "h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}"
    )
    head = f"<meta charset='utf-8'><title>domain-lm report: {html.escape(run_root.name)}</title><style>{style}</style>"
    return f"<!doctype html>\n<html><head>{head}</head><body>\n{body}\n</body></html>\n"


def write_report(run: Run, config: PipelineConfig | None = None) -> Path:
    """Write report.md and the self-contained report.html into the run dir; returns the HTML path."""
    text, _ = build_markdown(run, config)
    atomic.write_text(run.root / "report.md", text)
    stage_dirs = [s.path for s in run.stages()]
    out = run.root / "report.html"
    atomic.write_text(out, _to_html(text, run.root, stage_dirs))
    return out
