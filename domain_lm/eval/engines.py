"""Which engines the eval stage opens, and which adapter or weights on each score which stage.

Each model stage trains on the merged output of the one before (SFT: a LoRA on the merged
pretrain model; PPO/DPO: a LoRA on the merged SFT model). A stage whose LoRA sits on a stage that
is itself scored through an engine is scored on that same engine, as the stack of adapters from the
engine's model up to it combined into one (``loading.combine_lora_adapters``, exact). A stage that
is a full fine-tune (or whose adapter is not a plain LoRA) is an engine root of its own, and the
stages trained on it become adapters there. So a run with LoRA stages needs one engine (the base),
and one with full-FT continued pretraining two (the base; the pretrained model with SFT and RLHF
as adapters): never one per stage.

The other way to score every stage on one engine (``score_stages(strategy="swap")``): load each
stage's merged weights into the same engine in place, in turn. Exact for any stage (LoRA or full
fine-tune) and with no LoRA arithmetic per token, which on vLLM's CPU backend (per-token gathered
adapter matrices) costs more than the weight reload: the eval stage's default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from domain_lm.models.loading import AdapterStackError, check_plain_lora, combine_lora_adapters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageModel:
    """A model stage's output: merged weights, and the LoRA it trained on ``parent``'s model (if any)."""

    stage: str
    model: Path
    adapter: Path | None = None
    parent: str | None = None


@dataclass
class EngineGroup:
    """One engine: the merged ``model`` of stage ``root``, scoring each stage of ``systems`` with the
    stack of adapters listed for it (``[]``: the engine's own model)."""

    root: str
    model: Path
    systems: dict[str, list[Path]] = field(default_factory=dict)

    def adapter_dirs(self, work_dir: Path) -> dict[str, Path]:
        """Stage -> one adapter directory (a stack of several is combined under ``work_dir``)."""
        out: dict[str, Path] = {}
        for stage, chain in self.systems.items():
            if len(chain) == 1:
                out[stage] = chain[0]
            elif chain:
                out[stage] = combine_lora_adapters(chain, work_dir / f"{self.root}-{stage}", self.model)
        return out


def plan_engines(stages: Sequence[StageModel], use_adapters: bool = True) -> list[EngineGroup]:
    """Engine groups for ``stages`` (in pipeline order): as few engines as the adapters allow.

    ``use_adapters=False`` gives one engine per stage on its merged weights (the old way; what the
    benchmark compares against).
    """
    chains: dict[str, tuple[str, list[Path]]] = {}
    groups: dict[str, EngineGroup] = {}
    for s in stages:
        root, chain = s.stage, []
        if use_adapters and s.adapter is not None and s.parent in chains:
            try:
                check_plain_lora(s.adapter)
                root, upstream = chains[s.parent]
                chain = [*upstream, s.adapter]
            except AdapterStackError as e:
                log.info("eval: %s is scored on its merged weights: %s", s.stage, e)
        chains[s.stage] = (root, chain)
        if root == s.stage:
            groups[root] = EngineGroup(root=root, model=s.model)
        groups[root].systems[s.stage] = chain
    return list(groups.values())


# --------------------------------------------------------------------------- scoring

#: How the eval stage gets every stage's answers (``eval.strategy``).
STRATEGIES = ("swap", "adapters", "per_stage")


@dataclass
class EngineRun:
    """What one engine did: its model, the stages it scored, start and answering time."""

    model: str
    systems: list[str]
    start_s: float
    answer_s: float
    answers: int
    reused: bool = False  # the engine before it, with this model's weights loaded in place
    tokens: int = 0  # generated tokens of the valid answers

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "systems": self.systems,
            "reused": self.reused,
            "start_s": round(self.start_s, 1),
            "answer_s": round(self.answer_s, 1),
            "answers": self.answers,
            "answers_per_s": round(self.answers / self.answer_s, 2) if self.answer_s else None,
            "tokens": self.tokens,
        }


def score_stages(
    stages: Sequence[StageModel],
    tasks: dict[str, tuple[Any, Sequence[Any]]],
    strategy: str = "swap",
    kind: str = "vllm",
    max_tokens: int | None = None,
    work_dir: Path | None = None,
    **engine_opts: Any,
) -> tuple[dict[str, dict[str, list[Any]]], list[EngineRun]]:
    """Every stage's predictions on every task (``{stage: {task: [Prediction]}}``) and the engines used.

    ``swap``: one engine; each stage's merged weights are loaded into it in place in turn (the
    engines without ``load_weights`` open one per stage). ``adapters``: ``plan_engines`` (LoRA
    stages as adapters, all stages of an engine submitted together). ``per_stage``: one engine per
    stage on its merged weights.
    """
    import tempfile
    import time

    from domain_lm.eval.harness import predict_all
    from domain_lm.inference import create_engine

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown eval strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    n_records = sum(len(recs) for _, recs in tasks.values())
    predictions: dict[str, dict[str, list[Any]]] = {}
    runs: list[EngineRun] = []
    with tempfile.TemporaryDirectory(prefix="eval-adapters-") as tmp:
        groups = plan_engines(stages, use_adapters=strategy == "adapters")
        engine = None
        try:
            for group in groups:
                adapters = group.adapter_dirs(Path(work_dir or tmp) / "adapters")
                t0 = time.perf_counter()
                reuse = strategy == "swap" and engine is not None and hasattr(engine, "load_weights")
                if reuse:
                    engine.load_weights(group.model)  # the same engine, the next stage's weights
                else:
                    if engine is not None:
                        engine.close()
                    engine = create_engine(group.model, kind=kind, adapters={s: str(p) for s, p in adapters.items()}, **engine_opts)
                started = time.perf_counter() - t0
                systems = {s: (s if s in adapters else None) for s in group.systems}
                preds, elapsed = predict_all(engine, systems, tasks, max_tokens)
                predictions.update(preds)
                tokens = sum(p.tokens for by_task in preds.values() for ps in by_task.values() for p in ps)
                runs.append(EngineRun(group.root, list(group.systems), started, elapsed, len(systems) * n_records, reuse, tokens))
                log.info("eval: %s scored %s: %d answers in %.0fs", group.root, ", ".join(systems), runs[-1].answers, elapsed)
        finally:
            if engine is not None:
                engine.close()
    return predictions, runs
