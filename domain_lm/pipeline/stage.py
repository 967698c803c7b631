"""A pipeline stage (what it needs from the config, what it must write) and the typed context it runs in.

A stage is a plain value: its glue module under ``domain_lm.stages`` builds one ``Stage`` and
``domain_lm.pipeline.graph`` wires the stages together (order, which results each one reads). The
runner (``domain_lm.pipeline.run``) gives ``Stage.run`` a ``StageContext`` whose ``inputs`` hold
exactly the upstream results the graph names, and checks afterwards that every declared output
was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from domain_lm.config import PipelineConfig
from domain_lm.errors import DomainLMError
from domain_lm.pipeline.store import ModelCard, Run, StageResult, StageWriter

if TYPE_CHECKING:
    from transformers import TrainerCallback


def no_external_data(config: PipelineConfig) -> dict[str, str]:
    """``Stage.data_hashes`` of a stage that reads only upstream results (their fingerprints cover them)."""
    return {}


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    ``name`` is its directory under ``runs/<run>/`` and its CLI command; ``title`` heads its section
    of the run report; ``sections`` are the config sections whose values change its result (they
    are part of its fingerprint, with ``data_hashes(config)``: content hashes of external input
    files); ``outputs`` are the artefacts every successful run writes (the runner checks them).
    ``run`` writes files under ``ctx.out`` and fills ``ctx.result`` (metrics, artefacts, inputs).
    """

    name: str
    title: str
    sections: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[["StageContext"], None]
    data_hashes: Callable[[PipelineConfig], dict[str, str]] = no_external_data


@dataclass(frozen=True)
class StageInputs:
    """The upstream results a stage reads, as the graph declares them.

    ``model_from`` lists the stages whose ``model`` artefact may be the stage's input model, most
    refined first; ``results`` holds every complete upstream result the stage reads, in graph order.
    """

    stage: str
    model_from: tuple[str, ...] = ()
    results: dict[str, StageResult] = field(default_factory=dict)

    def get(self, name: str) -> StageResult | None:
        return self.results.get(name)

    def require(self, name: str, hint: str) -> StageResult:
        """The result of ``name``; a ``DomainLMError`` with ``hint`` (how to produce it) when missing."""
        result = self.results.get(name)
        if result is None:
            raise DomainLMError(f"Stage {self.stage} needs the {name} stage, which has not run. {hint}")
        return result

    def model(self) -> tuple[StageResult, Path]:
        """The most refined upstream model (its stage result and the ``model`` directory)."""
        for name in self.model_from:
            result = self.results.get(name)
            if result is not None and result.has("model"):
                return result, result.artefact("model")
        raise DomainLMError(
            f"Stage {self.stage} needs a model from one of {list(self.model_from)}, but none has run. "
            "Run the earlier stage first (or `domain-lm pipeline run`)."
        )

    def models(self) -> dict[str, Path]:
        """Every upstream ``model`` directory by stage, in graph order (what ``eval`` compares)."""
        return {name: r.artefact("model") for name, r in self.results.items() if r.has("model")}


@dataclass
class StageContext:
    """Everything a stage's ``run`` gets: the config, where to write, what it may read."""

    config: PipelineConfig
    run: Run
    writer: StageWriter
    inputs: StageInputs
    resume: bool = False
    #: Extra ``transformers.TrainerCallback``s for the stages that train with the HF Trainer
    #: (tests use one to stop a run right after a checkpoint).
    callbacks: tuple["TrainerCallback", ...] = ()

    @property
    def out(self) -> Path:
        """The (staging) directory the stage writes into."""
        return self.writer.path

    @property
    def result(self) -> StageResult:
        """The stage's result, filled by ``run`` (metrics, artefacts, input hashes)."""
        return self.writer.result

    @property
    def work_dir(self) -> Path:
        """Persistent scratch directory (checkpoints) that survives a kill."""
        return self.run.work_dir(self.writer.result.stage)

    def add_artefact(self, name: str, relpath: str) -> None:
        """Record ``relpath`` (under ``out``, must exist) as artefact ``name``."""
        self.writer.add_artefact(name, relpath)

    def set_model_card(self, card: ModelCard) -> None:
        self.writer.model_card = card
