"""The pipeline graph: every stage, its order, and what each reads. Defined here and nowhere else.

    base -> corpus -> pretrain -> sft -> reward -> ppo
                                     \\-> dpo
    eval reads every model stage above.

``MODEL_TIERS`` orders the stages whose ``model`` artefact is a causal LM by refinement; from it
come a stage's candidate input models (``models_up_to``), the order ``eval`` compares them in
(``MODEL_STAGES``) and the order a run's final model is picked in (``FINAL_MODEL_ORDER``, used by
``serve`` and ``bundle``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from domain_lm.config import PipelineConfig
from domain_lm.errors import DomainLMError
from domain_lm.pipeline.stage import Stage
from domain_lm.stages import base, corpus, dpo, ppo, pretrain, reward, sft
from domain_lm.stages import eval as evaluation

#: Stages whose ``model`` is a causal LM, least refined first. Each tier is trained from the most
#: refined model below it; a tier's stages are alternatives, in order of preference (PPO over DPO).
MODEL_TIERS: tuple[tuple[Stage, ...], ...] = ((base.STAGE,), (pretrain.STAGE,), (sft.STAGE,), (ppo.STAGE, dpo.STAGE))

#: The model stages in pipeline order (what ``eval`` compares, in this order).
MODEL_STAGES: tuple[str, ...] = tuple(s.name for tier in MODEL_TIERS for s in tier)

#: The model stages most refined first: a run's final model is the first one present.
FINAL_MODEL_ORDER: tuple[str, ...] = tuple(s.name for tier in reversed(MODEL_TIERS) for s in tier)


def models_up_to(stage: Stage) -> tuple[str, ...]:
    """The model stages from the base up to ``stage``'s tier, most refined first (the candidates
    for the input model of a stage that trains from the ``stage`` model)."""
    last = next(i for i, tier in enumerate(MODEL_TIERS) if stage in tier)
    return tuple(s.name for tier in reversed(MODEL_TIERS[: last + 1]) for s in tier)


def _always(config: PipelineConfig) -> bool:
    return True


def _pretraining(config: PipelineConfig) -> bool:
    return config.pretrain.enabled


def _rlhf(*algorithms: str) -> Callable[[PipelineConfig], bool]:
    def runs(config: PipelineConfig) -> bool:
        return config.rlhf.enabled and config.rlhf.algorithm in algorithms

    return runs


@dataclass(frozen=True)
class Node:
    """A stage in the graph: where its input model comes from (candidates, most refined first),
    the other stages whose results it reads, and when ``pipeline run`` runs it."""

    stage: Stage
    model_from: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    runs_if: Callable[[PipelineConfig], bool] = _always

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every stage whose result this one reads (and whose fingerprint is part of its own)."""
        return self.model_from + tuple(r for r in self.reads if r not in self.model_from)


#: The pipeline, in order.
PIPELINE: tuple[Node, ...] = (
    Node(base.STAGE),
    Node(corpus.STAGE, model_from=models_up_to(base.STAGE), runs_if=_pretraining),
    Node(pretrain.STAGE, model_from=models_up_to(base.STAGE), reads=(corpus.STAGE.name,), runs_if=_pretraining),
    Node(sft.STAGE, model_from=models_up_to(pretrain.STAGE), runs_if=lambda c: c.sft.enabled),
    Node(reward.STAGE, model_from=models_up_to(sft.STAGE), runs_if=_rlhf("ppo", "both")),
    Node(ppo.STAGE, model_from=models_up_to(sft.STAGE), reads=(reward.STAGE.name,), runs_if=_rlhf("ppo", "both")),
    Node(dpo.STAGE, model_from=models_up_to(sft.STAGE), runs_if=_rlhf("dpo", "both")),
    Node(evaluation.STAGE, reads=MODEL_STAGES, runs_if=lambda c: c.eval.enabled),
)

NODES: Mapping[str, Node] = MappingProxyType({n.stage.name: n for n in PIPELINE})

#: Stage names in pipeline order.
STAGE_NAMES: tuple[str, ...] = tuple(NODES)


def node(name: str) -> Node:
    """The graph node of stage ``name`` (a ``DomainLMError`` listing the stages if unknown)."""
    if name not in NODES:
        raise DomainLMError(f"Unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}.")
    return NODES[name]


def plan(config: PipelineConfig) -> list[str]:
    """The stages ``pipeline run`` runs for this config, in order."""
    return [n.stage.name for n in PIPELINE if n.runs_if(config)]
