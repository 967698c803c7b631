"""Stage registry and runner.

Every stage is a module ``domain_lm.<...>`` exporting

    SECTIONS: list[str]          config sections whose values change its result
    NEEDS: list[str]             upstream stages whose results it reads (first complete one wins
                                 for alternatives written "sft|pretrain|base")
    def data_hashes(config) -> dict[str, str]      hashes of external input files (may be {})
    def run(ctx: StageContext) -> StageResult      fills ctx.writer and returns its result

The runner computes a fingerprint from those, skips a stage whose complete result has the same
fingerprint, and writes the stage atomically through the run store.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from domain_lm.config import PipelineConfig
from domain_lm.errors import DomainLMError
from domain_lm.hashing import sha256_json
from domain_lm.runstore import Run, StageResult, StageWriter

log = logging.getLogger(__name__)

#: Pipeline order. Values are the modules implementing each stage.
STAGES: dict[str, str] = {
    "base": "domain_lm.models.stage",
    "corpus": "domain_lm.data.corpus_stage",
    "pretrain": "domain_lm.train.pretrain",
    "sft": "domain_lm.train.sft",
    "reward": "domain_lm.train.reward",
    "ppo": "domain_lm.train.ppo",
    "dpo": "domain_lm.train.dpo",
    "eval": "domain_lm.eval.stage",
}


@dataclass
class StageContext:
    config: PipelineConfig
    run: Run
    writer: StageWriter
    inputs: dict[str, StageResult] = field(default_factory=dict)
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        """The (staging) directory the stage writes into."""
        return self.writer.path

    @property
    def work_dir(self) -> Path:
        """Persistent scratch directory (checkpoints) that survives a kill."""
        return self.run.work_dir(self.writer.result.stage)

    def input_model(self, *stages: str) -> tuple[StageResult, Path]:
        """The first upstream stage among ``stages`` that produced a ``model``, and its path."""
        for s in stages:
            r = self.inputs.get(s)
            if r is not None and r.has("model"):
                return r, r.artefact("model")
        raise DomainLMError(f"Stage {self.writer.result.stage} needs a model from one of {list(stages)}, but none has run. Run the earlier stage first (or `domain-lm pipeline run`).")


def load_stage_module(name: str) -> ModuleType:
    if name not in STAGES:
        raise DomainLMError(f"Unknown stage {name!r}; stages are: {', '.join(STAGES)}.")
    try:
        return importlib.import_module(STAGES[name])
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("domain_lm"):
            raise DomainLMError(f"Stage {name!r} is not available yet in this build.") from None
        raise


def _needs(module: ModuleType) -> list[str]:
    out: list[str] = []
    for item in getattr(module, "NEEDS", []):
        out.extend(item.split("|"))
    return out


def fingerprint(name: str, config: PipelineConfig, inputs: dict[str, StageResult]) -> str:
    module = load_stage_module(name)
    return sha256_json(
        {
            "stage": name,
            "sections": {s: config.section_dict(s) for s in getattr(module, "SECTIONS", [])},
            "upstream": {k: v.fingerprint for k, v in sorted(inputs.items())},
            "data": module.data_hashes(config) if hasattr(module, "data_hashes") else {},
        }
    )


def gather_inputs(name: str, run: Run) -> dict[str, StageResult]:
    module = load_stage_module(name)
    inputs = {}
    for s in _needs(module):
        r = run.load(s)
        if r is not None:
            inputs[s] = r
    return inputs


def _claim_work_dir(run: Run, name: str, fp: str) -> None:
    """Checkpoints in the work dir belong to one fingerprint; stale ones (config changed) are wiped
    so ``--resume`` never continues a run made with other inputs."""
    import shutil

    work = run.work_dir(name)
    marker = work / "FINGERPRINT"
    if marker.is_file() and marker.read_text().strip() != fp:
        shutil.rmtree(work)
        work = run.work_dir(name)
    marker = work / "FINGERPRINT"
    marker.write_text(fp)


def run_stage(name: str, config: PipelineConfig, resume: bool = False, force: bool = False, extra: dict[str, Any] | None = None) -> tuple[StageResult, bool]:
    """Run one stage (or reuse its result). Returns (result, skipped)."""
    run = Run.from_config(config)
    module = load_stage_module(name)
    inputs = gather_inputs(name, run)
    fp = fingerprint(name, config, inputs)
    done = run.load(name)
    if done is not None and done.fingerprint == fp and not force:
        return done, True
    _claim_work_dir(run, name, fp)
    with run.writing(name, config) as writer:
        writer.result.fingerprint = fp
        writer.result.lineage = [{"stage": k, "fingerprint": v.fingerprint, "path": str(v.path)} for k, v in inputs.items()]
        ctx = StageContext(config=config, run=run, writer=writer, inputs=inputs, resume=resume, extra=extra or {})
        t0 = time.time()
        module.run(ctx)
        log.info("stage %s finished in %.1fs", name, time.time() - t0)
    result = run.load(name)
    assert result is not None
    return result, False
