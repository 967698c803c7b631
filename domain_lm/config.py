"""The pipeline config: one YAML file describes a whole run.

Loading order: the profile's defaults (``quick`` or ``full``) -> the YAML file -> ``key=value``
overrides from the command line. Unknown keys are errors; every error names the key and why.
Keys renamed in issue 16 (``RENAMED_KEYS``) still load for one release: they are moved to their
new place with one warning each. The resolved config is written next to every artefact (see
``domain_lm.pipeline.store``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from domain_lm.errors import ConfigError

log = logging.getLogger(__name__)


class Section(BaseModel):
    """Base for every config section: unknown keys are rejected, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    #: Keys renamed in issue 16, old -> new, relative to this section (a key names its subtree:
    #: ``lora.r`` -> ``peft.lora.r``). The old ones load for one release, with a warning.
    renamed_keys: ClassVar[dict[str, str]] = {}
    #: Keys that never changed anything: accepted (and ignored) for one release, with a warning.
    dropped_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _deprecated_keys(cls, data: Any) -> Any:
        # A loaded config is mapped by ``build_config`` (before the profile, with the file's name);
        # this catches code that builds a section directly.
        if isinstance(data, dict) and (cls.renamed_keys or cls.dropped_keys):
            return _Deprecations(cls.renamed_keys, cls.dropped_keys).data(data, f"{cls.__name__}(...)")
        return data


# --------------------------------------------------------------------------- shared sections


class LoraSection(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'."
    )


#: The keys a stage's ``peft`` section replaced.
PEFT_RENAMES = {"method": "peft.method", "lora": "peft.lora", "lora_top_layers": "peft.top_layers"}


class PeftSection(Section):
    """How a training stage changes the model: LoRA adapters (merged into full weights after
    training) or full fine-tuning."""

    method: Literal["lora", "full"] = "lora"
    lora: LoraSection = Field(default_factory=LoraSection)
    top_layers: int | None = Field(
        None, ge=1, description="LoRA only on the top N transformer layers (backward stops there: cheaper on CPU); None: all layers."
    )


class PretrainPeftSection(PeftSection):
    """Continued pretraining changes the full weights by default: on a 135M-270M model LoRA moved
    held-out domain perplexity by a few percent where full fine-tuning moved it by 25-30% in the
    same time (bench/pretrain_bench.py)."""

    method: Literal["lora", "full"] = "full"
    top_layers: int | None = Field(
        None, ge=1, description="Train only the top N transformer layers (LoRA: adapters there; full: those layers and the "
        "final norm, embeddings frozen); backward stops there (cheaper on CPU). None: all layers."
    )


class TrainSection(Section):
    """Optimiser and loop settings shared by every training stage."""

    learning_rate: float = Field(2e-4, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: run num_epochs instead.")
    num_epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1, description="Per-device micro batch.")
    grad_accum: int = Field(1, ge=1)
    max_seq_len: int = Field(512, ge=16)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: str = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(50, ge=1, description="Checkpoint interval for --resume.")
    seed: int = 42
    deepspeed: str | None = Field(None, description="Path of a DeepSpeed JSON config (deploy/deepspeed/).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (saves memory, costs ~25% time).")


# Each stage's ``train`` is its own subclass so that its defaults survive a partial override: a
# profile or config that sets only ``dpo.train.max_steps`` keeps DPO's learning rate, not the base
# class's (a ``default_factory`` is thrown away as soon as any key of the section is given).


class PretrainTrainSection(TrainSection):
    """Continued pretraining's optimiser and loop (full fine-tuning by default: see ``PretrainSection``)."""

    learning_rate: float = Field(2e-4, gt=0)


class SftTrainSection(TrainSection):
    """SFT's optimiser and loop."""

    learning_rate: float = Field(2e-4, gt=0)


class RewardTrainSection(TrainSection):
    """The reward model's optimiser and loop."""

    learning_rate: float = Field(1e-4, gt=0)


class DpoTrainSection(TrainSection):
    """DPO's optimiser and loop (a small learning rate: DPO drifts fast from its reference)."""

    learning_rate: float = Field(5e-5, gt=0)


# --------------------------------------------------------------------------- per-stage sections


class BaseModelSection(Section):
    name: str = Field("smollm2-135m", description="Registry name (smollm2-135m, gemma3-270m) or a local path.")
    store: str | None = Field(None, description="Model store directory; default $DOMAIN_LM_HOME/models.")


class CorpusSource(Section):
    path: str
    format: Literal["auto", "txt", "md", "jsonl", "csv", "pdf", "docx"] = "auto"
    text_column: str = "text"
    lang: Literal["auto", "en", "zh"] = "auto"
    split: Literal["file", "blank_line"] = Field(
        "file", description="Text files: one document per file, or documents separated by an empty line."
    )
    max_docs: int | None = Field(None, ge=1, description="Read at most this many documents from this source (sampling a big corpus).")
    doc_column: str | None = Field(
        None,
        description="jsonl/csv: column naming the document a row comes from. Rows of one document land on the same side of the "
        "held-out split, chosen by a seeded hash of that id (the rule task data with document ids is split by), "
        "so text of a held-out task document is never pretrained on.",
    )


class CorpusSection(Section):
    sources: list[CorpusSource] = Field(
        default_factory=list,
        description="Domain text. Empty: the embedded domain corpus (10-K text from TAT-QA and KPI-EDGAR, SEC loan agreements "
        "from FIN NER), split by the document ids the embedded task data carries.",
    )
    general_sources: list[CorpusSource] = Field(
        default_factory=list,
        description="General text replayed against forgetting (all of it trains). Empty: see general_replay.",
    )
    general_replay: Literal["samples", "embedded"] = Field(
        "samples",
        description="Replay text when general_sources is empty: 'samples' = text sampled from the base model "
        "(pretrain.replay_samples), 'embedded' = the embedded HH dialogues set aside for replay (hh_rlhf/general_replay).",
    )
    general_heldout_sources: list[CorpusSource] = Field(
        default_factory=list,
        description="General text general perplexity is measured on; never trained on (a replay document that duplicates "
        "one is dropped). Empty: the embedded held-out HH dialogues (hh_rlhf/general_heldout).",
    )
    min_chars: int = Field(200, ge=0)
    near_dup_threshold: float = Field(0.85, gt=0, le=1, description="MinHash Jaccard threshold.")
    pii_scrub: bool = True
    block_size: int = Field(256, ge=16, description="Tokens per packed training block.")
    chunk_tokens: int = Field(512, ge=16)
    heldout_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of domain documents held out for perplexity. With document ids (doc_column, the embedded corpus) it "
        "must be at least tasks.eval_fraction, with seed = tasks.seed, so every held-out task document is held out here too.",
    )
    shard_docs: int = Field(2000, ge=1, description="Documents per processing shard.")
    seed: int = 42
    num_perm: int = Field(128, ge=16, description="MinHash permutations for near-duplicate detection.")
    boilerplate_patterns: list[str] = Field(default_factory=list, description="Extra regexes; a matching paragraph is dropped.")
    max_docs: int | None = Field(
        None, ge=1, description="Stop after this many raw documents per source list (sampling a big corpus)."
    )
    cache: bool = Field(True, description="Reuse a build with the same inputs+config from $DOMAIN_LM_HOME/cache/corpus.")


class PretrainSection(Section):
    renamed_keys = PEFT_RENAMES

    enabled: bool = True
    peft: PretrainPeftSection = Field(default_factory=PretrainPeftSection)
    train_embeddings: bool = Field(False, description="Also train embeddings and LM head (LoRA only).")
    replay_fraction: float = Field(0.1, ge=0, lt=1, description="Share of general text mixed in against forgetting.")
    replay_samples: int = Field(32, ge=0, description="Texts sampled from the base model when no general corpus.")
    replay_max_new_tokens: int = Field(128, ge=8, description="Length of each text sampled from the base model.")
    eval_max_blocks: int = Field(64, ge=1, description="Held-out blocks used for each perplexity measurement.")
    train: PretrainTrainSection = Field(default_factory=PretrainTrainSection)


class TaskDataset(Section):
    task: str = Field(description="Template name, e.g. sentiment.")
    path: str | None = Field(None, description="JSONL/CSV file; None: the built-in demo examples.")
    fields: dict[str, str] = Field(default_factory=dict, description="Template field -> column in the file.")
    label_field: str = "label"
    label_map: dict[str, str] = Field(default_factory=dict)
    lang: Literal["en", "zh"] = "en"
    max_examples: int | None = None
    group_field: str | None = Field(
        None,
        description="Column naming the document (or other unit) a row comes from, e.g. FiNER-ORD `doc_idx`: rows of one group "
        "always land on the same side of the train/eval split. None: each record is split on its own content.",
    )


#: The embedded real task data the demo uses (``domain_lm.data.embedded``): finance tweets (sentiment),
#: Banking77 (customer_intent), FIN NER (entities), KPI-EDGAR and NLU++ (extraction).
DEMO_DATASETS = (
    "twitter_fin_sentiment/sentiment",
    "banking77/intents",
    "fin_ner/entities",
    "kpi_edgar/extraction",
    "nlupp_banking/extraction",
)

#: The task templates that ship with the project (repository checkout / editable install).
BUNDLED_TEMPLATES = Path(__file__).resolve().parent.parent / "task_templates"


class TasksSection(Section):
    templates_dir: str = Field(
        "task_templates",
        validate_default=True,
        description="Directory of task templates; the bundled ones when the default is not in the working directory.",
    )

    @field_validator("templates_dir")
    @classmethod
    def _bundled_default(cls, v: str) -> str:
        if v == "task_templates" and not Path(v).is_dir() and BUNDLED_TEMPLATES.is_dir():
            return str(BUNDLED_TEMPLATES)
        return v
    datasets: list[TaskDataset] = Field(default_factory=list, description="Empty: the demo data (demo_datasets).")
    eval_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of documents (records without one: of records) held out for evaluation; the corpus stage holds out "
        "the same documents (corpus.heldout_fraction at least this, corpus.seed = tasks.seed).",
    )
    demo_datasets: list[str] = Field(
        default_factory=lambda: list(DEMO_DATASETS),
        description="Embedded real datasets (domain_lm/resources/datasets) the demo tasks use when datasets is empty. "
        "tatqa/extraction is left out by default: its inputs are 3x longer (slower SFT and evaluation on a CPU).",
    )
    demo_tasks: list[str] = Field(
        default_factory=list,
        description="Demo tasks used when datasets is empty; empty: the tasks of demo_datasets. A task without embedded data "
        "(report_summary, key_points, business_line) uses code-generated synthetic examples, marked 'synthetic' in the report.",
    )
    demo_langs: list[Literal["en", "zh"]] = Field(
        default_factory=lambda: ["en"],
        description="Languages of the demo data. The embedded data is English; 'zh' adds the synthetic Chinese examples.",
    )
    seed: int = Field(42, description="Seed of the document-level train/eval split.")

    @field_validator("demo_datasets")
    @classmethod
    def _known_datasets(cls, v: list[str]) -> list[str]:
        from domain_lm.data.embedded import available

        unknown = [name for name in v if name not in available("task")]
        if unknown:
            raise ValueError(f"unknown embedded task datasets {unknown}; available: {', '.join(available('task'))}")
        return v


class InstructSource(Section):
    """User instruction data in LLaMA-Factory formats (alpaca / sharegpt), mixed into SFT."""

    path: str = Field(description="A JSON/JSONL file, or a dataset_info.json declaring several.")
    formatting: Literal["alpaca", "sharegpt", "dataset_info"] = "alpaca"
    names: list[str] = Field(default_factory=list, description="dataset_info only: datasets to use; empty: all.")
    columns: dict[str, str] = Field(default_factory=dict)
    max_examples: int | None = None


class SftSection(Section):
    renamed_keys = PEFT_RENAMES

    enabled: bool = True
    peft: PeftSection = Field(default_factory=PeftSection)
    packing: bool = Field(False, description="TRL packing of several examples into one row (per-example attention kept).")
    padding_free: bool = Field(True, description="Flatten each batch into one row without padding (per-example attention).")
    shared_prefix: bool = Field(
        True,
        description="In a padding-free row, compute a prompt start that several examples share (chat header, system prompt) "
        "once for them all: the same loss and gradients for fewer tokens (needs the sdpa/eager attention, i.e. not "
        "FlashAttention; off elsewhere).",
    )
    group_by_length: bool = Field(False, description="Length-grouped batches (only matters for padded batches).")
    loss_weighting: Literal["token", "example", "task"] = Field(
        "task",
        description="How answer tokens weigh in the loss. 'token': every token the same (a one-word label answer beside long "
        "JSON answers gets a few percent of the gradient and its task does not learn); 'example': every example's answer "
        "the same (label tasks learn, but a short empty answer then outweighs a long one within a task); 'task': every "
        "token of a task the same and every task the same share (the tasks' mean answer lengths).",
    )
    few_shot_fraction: float = Field(0.2, ge=0, le=1)
    max_few_shot: int = Field(2, ge=1, description="Few-shot examples in a few-shot prompt (1..max).")
    variants_per_example: int = Field(1, ge=1)
    task_weights: dict[str, float] = Field(
        default_factory=dict, description="Task -> share multiplier (2: twice the examples, 0.5: half); default 1."
    )
    max_examples_per_task: int | None = Field(None, ge=1, description="Cap on rendered training examples per task (seeded sample).")
    examples_per_task: int | None = Field(
        None,
        ge=1,
        description="Task-balanced sampling: every task gets this many rendered examples (times its task_weights entry): "
        "a seeded sample of a larger task, a smaller task's records again with other phrasings and few-shot prompts. "
        "None: each record once (variants_per_example), then task_weights and max_examples_per_task.",
    )
    instruct_sources: list[InstructSource] = Field(default_factory=list)
    per_task_adapters: bool = False
    qlora: bool = Field(False, description="Load the base in 4-bit (QLoRA) when bitsandbytes and CUDA are available; else plain LoRA.")
    train: SftTrainSection = Field(default_factory=SftTrainSection)


class RlhfSection(Section):
    """Which preference-optimisation stages ``pipeline run`` runs after SFT (their settings are in
    ``reward``, ``ppo`` and ``dpo``)."""

    enabled: bool = True
    algorithm: Literal["ppo", "dpo", "both"] = Field(
        "ppo", description="ppo: reward model then PPO; dpo: DPO on the preference pairs; both: all three, compared side by side in eval."
    )


class RewardSection(Section):
    renamed_keys = PEFT_RENAMES
    dropped_keys = ("enabled",)

    preference_sources: list[str] = Field(default_factory=list, description="Preference files (pairs, ranked, HH).")
    from_tasks: bool = Field(True, description="Build bank-task pairs from the labelled task data.")
    peft: PeftSection = Field(default_factory=PeftSection)
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    max_eval_pairs: int | None = Field(256, ge=1, description="Held-out pairs scored after training (seeded sample); None: all.")
    max_pairs_per_source: int | None = Field(None, ge=1, description="Cap on pairs read from each preference file.")
    sample_k: int = Field(
        0, ge=0, description="Answers sampled per task prompt from the upstream model and ranked by the task metric (0: off)."
    )
    sample_records: int = Field(16, ge=1, description="Task records used for sampled pairs when sample_k > 0.")
    center_rewards_coefficient: float | None = Field(0.01, ge=0, description="TRL auxiliary loss that keeps rewards centred on 0.")
    train: RewardTrainSection = Field(default_factory=RewardTrainSection)


class PpoTrainSection(TrainSection):
    """The PPO loop's optimiser settings (a ``TrainSection`` with PPO's defaults).

    The loop reads ``learning_rate`` (actor), ``max_steps`` (PPO steps), ``batch_size`` (the
    mini-batch of each update), ``max_grad_norm``, ``save_steps``, ``seed`` and ``deepspeed``.
    """

    learning_rate: float = Field(1e-5, gt=0, description="Actor learning rate (the critic's is ppo.critic_learning_rate).")
    max_steps: int = Field(20, ge=1, description="PPO steps: one rollout batch and its updates each.")
    batch_size: int = Field(4, ge=1, description="Mini-batch of each PPO update (at most ppo.rollout.batch_size).")
    save_steps: int = Field(10, ge=1, description="Checkpoint interval for --resume.")


#: ``TrainSection`` keys the PPO loop reads; the others must keep their defaults.
PPO_TRAIN_KEYS = ("learning_rate", "max_steps", "batch_size", "max_grad_norm", "save_steps", "seed", "deepspeed")


class RolloutSection(Section):
    """Where PPO's prompts come from and how responses are sampled."""

    batch_size: int = Field(8, ge=1, description="Prompts rolled out per PPO step.")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.9, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    buffer_size: int = Field(1, ge=1, description="Rollout batches kept in the experience buffer.")
    from_tasks: bool = Field(True, description="Prompts from the labelled task data (train split), rendered by the templates.")
    prompt_sources: list[str] = Field(default_factory=list, description="Extra prompt files (JSONL: prompt string or messages).")
    eval_prompts: int = Field(16, ge=0, description="Held-out prompts scored by the reward model before and after PPO.")
    max_prompt_len: int = Field(384, ge=16, description="Prompts longer than this (tokens) are cut to their last tokens.")


class PpoTricks(Section):
    """The PPO-Max switches (Zheng et al. 2023, arXiv:2307.04964), each beside its coefficients, so
    an ablation is a config diff."""

    use_reward_norm: bool = Field(True, description="Standardise scores with running moments, then clip to +-reward_clip.")
    reward_clip: float = 5.0
    use_token_kl: bool = Field(True, description="KL penalty per token (True) or once per sequence on the score.")
    use_gae: bool = Field(True, description="GAE advantages; False: Monte-Carlo returns minus values (lam=1).")
    use_advantage_whitening: bool = True
    use_policy_clip: bool = Field(True, description="Clipped surrogate objective.")
    clip_range: float = 0.2
    use_value_clip: bool = True
    value_clip_range: float = 0.2
    use_grad_clip: bool = Field(True, description="Global gradient-norm clipping at ppo.train.max_grad_norm.")
    use_ptx: bool = True
    ptx_coef: float = 0.1
    ptx_batch_size: int = Field(4, ge=1, description="SFT demonstrations per PPO-ptx step.")
    use_task_reward: bool = Field(
        True,
        description="Prompts rendered from labelled task data also earn task_reward_coef x the task metric of the "
        "sampled answer (0..1: label right, entity F1, ...), added to the normalised reward-model score.",
    )
    task_reward_coef: float = Field(1.0, ge=0)
    adaptive_kl: bool = False
    target_kl: float = 0.1
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL controller horizon (tokens of experience).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus (0: off, as in PPO-Max).")


class PpoSection(Section):
    """PPO-Max: ``train`` (optimiser and loop), ``rollout`` (prompts and sampling), ``tricks``
    (the PPO-Max switches), ``peft`` (the actor's and critic's LoRA) and the PPO coefficients."""

    renamed_keys = {
        **{k: v for k, v in PEFT_RENAMES.items() if k != "method"},
        "steps": "train.max_steps",
        "mini_batch_size": "train.batch_size",
        **{k: f"train.{k}" for k in ("learning_rate", "max_grad_norm", "save_steps", "seed", "deepspeed")},
        "rollout_batch_size": "rollout.batch_size",
        **{k: f"rollout.{k}" for k in RolloutSection.model_fields if k != "batch_size"},
        **{k: f"tricks.{k}" for k in PpoTricks.model_fields},
    }

    train: PpoTrainSection = Field(default_factory=PpoTrainSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    tricks: PpoTricks = Field(default_factory=PpoTricks)
    peft: PeftSection = Field(default_factory=PeftSection)
    ppo_epochs: int = Field(1, ge=1)
    critic_learning_rate: float = Field(5e-5, gt=0)
    critic_warmup_steps: int = Field(2, ge=0)
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator folded into the reward.")
    kl_stop_bound: float = Field(1.0, gt=0, description="Early stop when mean KL to the reference exceeds this.")

    @model_validator(mode="after")
    def _checks(self) -> "PpoSection":
        if self.peft.method != "lora":
            raise ValueError(
                "ppo.peft.method must be 'lora': the actor and critic train LoRA adapters, "
                "and the reference model is the actor with its adapter disabled"
            )
        unused = [k for k, f in PpoTrainSection.model_fields.items() if k not in PPO_TRAIN_KEYS and getattr(self.train, k) != f.default]
        if unused:
            raise ValueError(f"ppo.train.{unused[0]} is not used by the PPO loop (it reads {', '.join(PPO_TRAIN_KEYS)}); remove it")
        if self.train.batch_size > self.rollout.batch_size:
            raise ValueError("ppo.train.batch_size (the update mini-batch) must not exceed ppo.rollout.batch_size")
        return self


class DpoSection(Section):
    """Used when ``rlhf.algorithm`` is ``dpo`` or ``both``."""

    renamed_keys = PEFT_RENAMES

    beta: float = Field(0.1, gt=0)
    loss_type: str = Field("sigmoid", description="TRL DPO loss: sigmoid (DPO), ipo, hinge, ...")
    peft: PeftSection = Field(default_factory=PeftSection)
    train: DpoTrainSection = Field(default_factory=DpoTrainSection)


class EvalSection(Section):
    enabled: bool = True
    engine: Literal["auto", "vllm", "hf"] = "auto"
    max_examples: int | None = Field(
        200, ge=1, description="Held-out examples scored per task (a seeded sample of the held-out documents' examples); None: all."
    )
    baseline: bool = True
    max_new_tokens: int = Field(256, ge=1, description="Generation cap for json/text tasks (label tasks use the choices).")
    gpu_memory_utilization: float = Field(0.1, gt=0, le=1, description="vLLM engine share of (GPU or, on CPU, host) memory.")
    max_model_len: int = Field(2048, ge=64, description="Longest prompt + answer the eval engine accepts (tokens).")
    strategy: Literal["swap", "adapters", "per_stage"] = Field(
        "swap",
        description="How every stage is scored: 'swap' = one engine, each stage's merged weights loaded in place in turn; "
        "'adapters' = LoRA stages as adapters on one engine (stacks combined exactly; a full fine-tune adds one engine); "
        "'per_stage' = one engine per stage.",
    )


class ServeSection(Section):
    dropped_keys = ("enabled",)

    engine: Literal["auto", "vllm", "hf"] = "auto"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)
    # "auto": vLLM's choice on a GPU; on a CPU bfloat16 where it multiplies bf16 natively (AMX), else float32.
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(0.25, gt=0, le=1)
    max_model_len: int = Field(2048, ge=64)


class RunSection(Section):
    name: str = "demo"
    output_dir: str = "runs"
    seed: int = 42

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain directory name (no '/', not starting with '.')")
        return v


class PipelineConfig(Section):
    renamed_keys = {"ppo.enabled": "rlhf.enabled", "ppo.algorithm": "rlhf.algorithm"}

    profile: Literal["quick", "full"] = "quick"
    run: RunSection = Field(default_factory=RunSection)
    base_model: BaseModelSection = Field(default_factory=BaseModelSection)
    corpus: CorpusSection = Field(default_factory=CorpusSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    tasks: TasksSection = Field(default_factory=TasksSection)
    sft: SftSection = Field(default_factory=SftSection)
    rlhf: RlhfSection = Field(default_factory=RlhfSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    ppo: PpoSection = Field(default_factory=PpoSection)
    dpo: DpoSection = Field(default_factory=DpoSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    serve: ServeSection = Field(default_factory=ServeSection)

    def section_dict(self, name: str) -> dict[str, Any]:
        return getattr(self, name).model_dump(mode="json")

    @model_validator(mode="after")
    def _corpus_holds_out_task_documents(self) -> "PipelineConfig":
        # Documents are held out by a seeded hash below a fraction, in the corpus and in the task data
        # alike: the same seed and a corpus fraction at least the task one hold out every held-out
        # task document from continued pretraining too (else its text would leak into evaluation).
        c, t = self.corpus, self.tasks
        if corpus_split_by_doc(c):
            # Unset, they follow the task split (a config that only changes tasks.eval_fraction stays valid).
            if "heldout_fraction" not in c.model_fields_set:
                c.heldout_fraction = max(c.heldout_fraction, t.eval_fraction)
            if "seed" not in c.model_fields_set:
                c.seed = t.seed
        if corpus_split_by_doc(c) and (c.heldout_fraction < t.eval_fraction or c.seed != t.seed):
            raise ValueError(
                f"the corpus is split by document id (the embedded corpus, or a source with doc_column), so "
                f"corpus.heldout_fraction ({c.heldout_fraction}) must be at least tasks.eval_fraction ({t.eval_fraction}) and "
                f"corpus.seed ({c.seed}) must equal tasks.seed ({t.seed}); otherwise text of held-out task documents is pretrained on"
            )
        return self


def corpus_split_by_doc(section: CorpusSection) -> bool:
    """Whether the domain corpus is split by document ids shared with task data (the embedded
    corpus, used when there are no sources, or a source with ``doc_column``)."""
    return not section.sources or any(s.doc_column for s in section.sources)


# --------------------------------------------------------------------------- profiles

#: ``quick`` finishes on a 2-core CPU in minutes (SmolLM2-135M); ``full`` is a real run on a GPU node.
PROFILES: dict[str, dict[str, Any]] = {
    # SFT/reward/PPO/DPO: LoRA on the top layers only (peft.top_layers): backward stops there, ~1.5-3x
    # cheaper per step on CPU. Continued pretraining: full fine-tuning, 32 steps of 4 x 256 tokens at
    # 2e-4 (about 4 minutes on 2 idle cores), 10% replay of base-model samples: -29% held-out domain
    # perplexity, general perplexity on never-replayed HH dialogues -10% (bench/pretrain_bench.py).
    "quick": {
        "corpus": {"block_size": 256, "min_chars": 120},
        "pretrain": {
            "replay_samples": 8,
            "replay_fraction": 0.1,
            "eval_max_blocks": 32,  # 8k tokens per perplexity, spread over the held-out documents (4 measurements)
            "train": {"max_steps": 32, "batch_size": 4, "max_seq_len": 256, "save_steps": 16, "learning_rate": 2e-4,
                      "warmup_ratio": 0.05},
        },
        # SFT: task-balanced (256 rendered examples per task; Banking77 alone would otherwise be 55% of
        # the mix), 112 steps of 4, LoRA on every layer at 2e-3, the loss shared equally by the tasks
        # (loss_weighting: task) and sentiment's examples doubled. Measured on the demo's held-out split
        # (200 per task, by document; SFT stage alone), weighted F1 / F1 / exact match:
        #   top 8 layers, 1e-3, token loss:        sentiment 0.22, intents 0.19, entities 0.27
        #   all layers, 1e-3, token loss:          sentiment 0.16, intents 0.26, entities 0.32, extraction 0.19
        #   all layers, 2e-3, per-example, sent x2: sentiment 0.66, but entities 0.00 / extraction all-null
        #   all layers, 2e-3, task, (no x2):        sentiment 0.13, intents 0.24, entities 0.31, extraction 0.14
        #   all layers, 2e-3, task, sent x2 (this): sentiment 0.60, intents 0.23, entities 0.41, extraction 0.14
        # (base: 0.20 / 0.00 / 0.03). About 6 minutes on 2 idle cores. The same config on another host
        # (2026-12-07 fresh-clone demo): sentiment 0.43, intents 0.22, entities 0.40, extraction 0.15 after SFT;
        # lr 2e-3 over 112 steps is sensitive to the host's numerics (PPO's task reward then lifts sentiment to 0.50).
        "sft": {
            "peft": {"top_layers": None},
            "examples_per_task": 256,
            "task_weights": {"sentiment": 2.0},
            "loss_weighting": "task",
            "train": {"max_steps": 112, "batch_size": 4, "max_seq_len": 384, "save_steps": 16, "learning_rate": 2e-3},
        },
        "reward": {
            "peft": {"top_layers": 4},
            "max_eval_pairs": 64,
            "train": {"max_steps": 16, "batch_size": 4, "max_seq_len": 384, "save_steps": 8, "learning_rate": 5e-4},
        },
        "ppo": {
            "train": {"max_steps": 6, "batch_size": 4, "save_steps": 3, "learning_rate": 2e-4},
            "rollout": {"batch_size": 8, "max_new_tokens": 24, "eval_prompts": 8},
            "peft": {"top_layers": 4},
            "critic_warmup_steps": 1,
            "critic_learning_rate": 3e-4,
        },
        "dpo": {"peft": {"top_layers": 8}, "train": {"max_steps": 20, "batch_size": 2, "max_seq_len": 384, "save_steps": 10}},
        # >= 200 held-out examples per task; answers longer than 96 tokens are rarer than 1% in the demo's data.
        "eval": {"max_examples": 200, "max_new_tokens": 96},
    },
    "full": {
        "corpus": {"block_size": 1024, "chunk_tokens": 1024},
        "pretrain": {
            "replay_samples": 256,
            "train": {"num_epochs": 1, "batch_size": 8, "grad_accum": 4, "max_seq_len": 1024, "save_steps": 500},
        },
        "sft": {
            "variants_per_example": 2,
            "train": {"num_epochs": 3, "batch_size": 8, "grad_accum": 2, "max_seq_len": 1024, "save_steps": 200},
        },
        "reward": {"train": {"num_epochs": 1, "batch_size": 8, "max_seq_len": 1024, "save_steps": 200}},
        "ppo": {
            "train": {"max_steps": 200, "batch_size": 16},
            "rollout": {"batch_size": 64, "max_new_tokens": 128},
            "critic_warmup_steps": 10,
        },
        "dpo": {"train": {"num_epochs": 1, "batch_size": 4, "max_seq_len": 1024, "save_steps": 200}},
        "eval": {"max_examples": None},
    },
}


# --------------------------------------------------------------------------- deprecated keys


def _deprecated_tables() -> tuple[dict[str, str], tuple[str, ...]]:
    renamed, dropped = dict(PipelineConfig.renamed_keys), list(PipelineConfig.dropped_keys)
    for name, field in PipelineConfig.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, Section):
            renamed.update({f"{name}.{old}": f"{name}.{new}" for old, new in section.renamed_keys.items()})
            dropped += [f"{name}.{key}" for key in section.dropped_keys]
    return renamed, tuple(dropped)


#: Every key renamed in issue 16 (old -> new, full paths) and every dropped one: they still load
#: for one release, each with one warning that names its new key.
RENAMED_KEYS, DROPPED_KEYS = _deprecated_tables()


class _Deprecations:
    """Moves deprecated keys to their new place, warning once per key and config load."""

    def __init__(self, renamed: dict[str, str], dropped: tuple[str, ...]) -> None:
        self.renamed, self.dropped = renamed, dropped
        self.warned: set[str] = set()

    def _warn(self, old: str, advice: str, source: str) -> None:
        if old not in self.warned:
            self.warned.add(old)
            log.warning("Config key '%s' (from %s) is deprecated and will be removed in the next release: %s.", old, source, advice)

    def path(self, parts: list[str], source: str) -> list[str] | None:
        """The path an override sets (None: a dropped key, nothing to set)."""
        for i in range(len(parts), 0, -1):
            old = ".".join(parts[:i])
            if old in self.dropped:
                self._warn(old, "it has no effect; delete it", source)
                return None
            if old in self.renamed:
                self._warn(old, f"use '{self.renamed[old]}' instead", source)
                return self.renamed[old].split(".") + parts[i:]
        return parts

    def data(self, data: dict[str, Any], source: str) -> dict[str, Any]:
        """``data`` (a config mapping) with every deprecated key moved to its new place."""
        out = copy.deepcopy(data)
        for old, new in self.renamed.items():
            value = _pop_path(out, old.split("."))
            if value is _MISSING:
                continue
            if _get_path(out, new.split(".")) is not _MISSING:
                raise ConfigError(f"Invalid config {source}: both '{old}' and its new name '{new}' are set; keep only '{new}'.")
            self._warn(old, f"use '{new}' instead", source)
            _set_path(out, new.split("."), value)
        for old in self.dropped:
            if _pop_path(out, old.split(".")) is not _MISSING:
                self._warn(old, "it has no effect; delete it", source)
        return out


_MISSING = object()


def _parent(data: dict[str, Any], parts: list[str]) -> Any:
    node: Any = data
    for p in parts[:-1]:
        node = node.get(p) if isinstance(node, dict) else None
    return node


def _get_path(data: dict[str, Any], parts: list[str]) -> Any:
    """The value at ``parts`` (``_MISSING`` when absent)."""
    node = _parent(data, parts)
    return node[parts[-1]] if isinstance(node, dict) and parts[-1] in node else _MISSING


def _pop_path(data: dict[str, Any], parts: list[str]) -> Any:
    """Remove and return the value at ``parts`` (``_MISSING`` when absent)."""
    value = _get_path(data, parts)
    if value is not _MISSING:
        del _parent(data, parts)[parts[-1]]
    return value


# --------------------------------------------------------------------------- loading


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``update`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML so numbers, booleans and lists work."""
    if "=" not in item:
        raise ConfigError(f"Override {item!r} is not of the form key=value (for example sft.train.max_steps=10).")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"Override {item!r} has an empty key.")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return parts, value


def _set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"Override key {'.'.join(parts)!r}: {p!r} is not a section.")
        node = nxt
    node[parts[-1]] = value


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}' (check the spelling; see `domain-lm pipeline show-config` for valid keys)")
        elif isinstance(e.get("input"), dict):  # a check across a section's keys: the message names them
            lines.append(f"section '{loc}': {e['msg']}")
        else:
            lines.append(f"key '{loc}': {e['msg']} (got {e.get('input')!r})")
    return f"Invalid config {source}: " + "; ".join(lines) + "."


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None, source: str = "(inline)") -> PipelineConfig:
    """Validate a config dict after applying its profile's defaults and the overrides."""
    deprecations = _Deprecations(RENAMED_KEYS, DROPPED_KEYS)
    data = deprecations.data(data or {}, source)
    for item in overrides or []:
        parts, value = parse_override(item)
        path = deprecations.path(parts, "a --set override")
        if path is not None:
            _set_path(data, path, value)
    data = deprecations.data(data, "a --set override")  # a whole section given as an override may hold old keys
    profile = data.get("profile", "quick")
    if not isinstance(profile, str) or profile not in PROFILES:
        raise ConfigError(f"Invalid config {source}: key 'profile' must be one of {sorted(PROFILES)} (got {profile!r}).")
    merged = deep_merge(PROFILES[profile], data)
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load and validate a pipeline YAML (``None``: the embedded default, the quick demo)."""
    if path is None:
        return build_config({}, overrides, source="(embedded default)")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"Config file {p} does not exist or is not a file. Pass the path of a pipeline YAML (see configs/ for examples)."
        )
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {p} must hold a mapping at the top level, not {type(data).__name__}.")
    return build_config(data, overrides, source=str(p))
