"""Which engines the eval stage opens, and which adapter on each scores which stage.

Each model stage trains on the merged output of the one before (SFT: a LoRA on the merged
pretrain model; PPO/DPO: a LoRA on the merged SFT model). A stage whose LoRA sits on a stage that
is itself scored through an engine is scored on that same engine, as the stack of adapters from the
engine's model up to it combined into one (``loading.combine_lora_adapters``, exact). A stage that
is a full fine-tune (or whose adapter is not a plain LoRA) is an engine root of its own, and the
stages trained on it become adapters there. So a run with LoRA stages needs one engine (the base),
and one with full-FT continued pretraining two (the base; the pretrained model with SFT and RLHF
as adapters): never one per stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

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
