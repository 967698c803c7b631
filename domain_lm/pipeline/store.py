"""The run store: ``runs/<run>/<stage>/`` holds each stage's artefacts.

A stage directory appears only when the stage has finished: it is built in a hidden staging
directory and renamed into place (``core.atomic.atomic_dir``), with ``manifest.json`` written last
inside it. A stage is *complete* when its directory holds a manifest; a later stage reads only
complete stages. Work that must survive a kill (trainer checkpoints for ``--resume``) lives in
``runs/<run>/.work/<stage>/``, which no other stage reads.

Every complete stage holds:
  manifest.json   stage, fingerprint, input hashes, metrics, artefact paths, lineage, timings
  config.yaml     the resolved pipeline config
  MODEL_CARD.md   base model, data, metrics, lineage (for stages that produce a model)
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from domain_lm.config import PipelineConfig
from domain_lm.core import atomic

MANIFEST = "manifest.json"


@dataclass
class ModelCard:
    """What ``MODEL_CARD.md`` says about a stage's model (metrics, data hashes and lineage come from
    the stage result)."""

    title: str
    base_model: str
    method: str = ""
    description: str = ""
    data_notes: list[str] = field(default_factory=list)
    intended_use: str = "Internal bank NLP tasks; evaluate before production use."


@dataclass
class StageResult:
    """What a stage hands to the stages after it (and what its manifest records)."""

    stage: str
    path: Path
    fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    artefacts: dict[str, str] = field(default_factory=dict)  # name -> path relative to the stage dir
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> content hash
    lineage: list[dict[str, str]] = field(default_factory=list)  # upstream {stage, fingerprint, path}
    started_at: float = 0.0
    finished_at: float = 0.0

    def artefact(self, name: str) -> Path:
        if name not in self.artefacts:
            raise KeyError(f"stage {self.stage} has no artefact {name!r} (has: {sorted(self.artefacts)})")
        return self.path / self.artefacts[name]

    def has(self, name: str) -> bool:
        return name in self.artefacts

    def to_manifest(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "fingerprint": self.fingerprint,
            "metrics": self.metrics,
            "artefacts": self.artefacts,
            "inputs": self.inputs,
            "lineage": self.lineage,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.finished_at - self.started_at, 3),
        }

    @classmethod
    def from_manifest(cls, path: Path, data: dict[str, Any]) -> "StageResult":
        return cls(
            stage=data["stage"],
            path=path,
            fingerprint=data.get("fingerprint", ""),
            metrics=data.get("metrics", {}),
            artefacts=data.get("artefacts", {}),
            inputs=data.get("inputs", {}),
            lineage=data.get("lineage", []),
            started_at=data.get("started_at", 0.0),
            finished_at=data.get("finished_at", 0.0),
        )


class Run:
    """One run directory, ``<output_dir>/<name>``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "Run":
        return cls(Path(config.run.output_dir) / config.run.name)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def work_dir(self, stage: str) -> Path:
        """Persistent scratch space of a stage (checkpoints), kept across kills for resume."""
        d = self.root / ".work" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def load(self, stage: str) -> StageResult | None:
        """The complete result of ``stage``, or None if it has not finished."""
        d = self.stage_dir(stage)
        m = d / MANIFEST
        if not m.is_file():
            return None
        return StageResult.from_manifest(d, json.loads(m.read_text(encoding="utf-8")))

    def stages(self) -> list[StageResult]:
        if not self.root.is_dir():
            return []
        out = [self.load(p.name) for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        return sorted((r for r in out if r is not None), key=lambda r: r.started_at)

    @contextmanager
    def writing(self, stage: str, config: PipelineConfig | None = None) -> Iterator["StageWriter"]:
        """Build ``stage``'s directory atomically; the caller fills ``writer.result`` and files."""
        with atomic.atomic_dir(self.stage_dir(stage)) as staging:
            writer = StageWriter(stage, staging, self.stage_dir(stage), config)
            yield writer
            writer.finish()


class StageWriter:
    """Handle to a stage directory being written (``path`` is the staging dir)."""

    def __init__(self, stage: str, staging: Path, final: Path, config: PipelineConfig | None):
        self.path = staging
        self.final_path = final
        self.config = config
        self.result = StageResult(stage=stage, path=final, started_at=time.time())
        self.model_card: ModelCard | None = None

    def add_artefact(self, name: str, relpath: str) -> None:
        if not (self.path / relpath).exists():
            raise FileNotFoundError(f"artefact {name!r}: {relpath} was not written in {self.path}")
        self.result.artefacts[name] = relpath

    def finish(self) -> None:
        self.result.finished_at = time.time()
        if self.config is not None:
            resolved = yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
            atomic.write_text(self.path / "config.yaml", resolved)
        if self.model_card is not None:
            atomic.write_text(self.path / "MODEL_CARD.md", render_model_card(self.result, self.model_card))
        # The manifest goes last: its presence marks the stage complete.
        atomic.write_json(self.path / MANIFEST, self.result.to_manifest())


def render_model_card(result: StageResult, card: ModelCard) -> str:
    """A plain model card: base model, data, metrics, lineage."""
    lines = [f"# Model card: {card.title}", ""]
    lines += [f"- **Stage:** {result.stage}", f"- **Base model:** {card.base_model}"]
    if card.method:
        lines.append(f"- **Method:** {card.method}")
    if card.description:
        lines += ["", card.description]
    lines += ["", "## Data", ""]
    for name, digest in sorted(result.inputs.items()):
        lines.append(f"- `{name}`: sha256 `{digest[:16]}…`")
    for note in card.data_notes:
        lines.append(f"- {note}")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    for k, v in sorted(result.metrics.items()):
        if isinstance(v, (int, float, str)):
            lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += ["", "## Lineage", ""]
    for item in result.lineage:
        lines.append(f"- {item.get('stage')}: fingerprint `{item.get('fingerprint', '')[:16]}` at `{item.get('path')}`")
    if not result.lineage:
        lines.append("- (first stage)")
    lines += ["", "## Intended use", "", card.intended_use, ""]
    return "\n".join(lines)
