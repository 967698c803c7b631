"""Service settings, read once through pydantic-settings (env prefix ``DOMAIN_LM_``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Everything the service needs; ``domain-lm serve`` fills it from flags, tests construct it.

    Environment variables override defaults, e.g. ``DOMAIN_LM_MAX_QUEUE=32``; API keys come from
    ``DOMAIN_LM_API_KEYS`` and/or ``api_keys_file`` (hashes only, see ``services.security``).
    """

    model_config = SettingsConfigDict(env_prefix="DOMAIN_LM_", extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="Model directory (or store name) the engine loads at start.")
    model_name: str | None = Field(None, description="Name reported to clients; default: the directory name.")
    engine: Literal["auto", "vllm", "hf", "fake"] = "auto"
    engine_options: dict[str, Any] = Field(default_factory=dict, description="Passed to create_engine.")
    adapters: dict[str, str] = Field(default_factory=dict, description="LoRA adapter name -> directory.")
    templates_dir: str = "task_templates"
    template_reload_interval_s: float = Field(1.0, ge=0, description="Minimum seconds between template directory checks.")
    template_store: str | None = Field(
        None,
        description="Writable directory for templates registered at run time (PUT), versioned and audited; put it on a "
        "persistent volume, shared by every replica. Default: <templates_dir>/.versions, unless templates_dir belongs to a "
        "bundle (then runtime registration is off until a store is given).",
    )
    template_check_timeout_s: float = Field(0.15, gt=0, description="Hard time budget to check a submitted template (then 400).")
    template_check_memory_mb: int = Field(512, ge=64, description="Memory the template checker process may add while checking.")

    teach: bool = Field(True, description="Allow teaching tasks while serving (example uploads, training jobs); needs a writable store.")
    adapter_store: str | None = Field(
        None,
        description="Writable directory for what teaching produces (examples, adapters, reports), versioned per task. "
        "Default: <template store>/adapters, beside the templates registered at run time.",
    )
    max_jobs_queued: int = Field(4, ge=0, description="Teaching jobs waiting for a worker; beyond it: 429.")
    job_workers: int = Field(1, ge=1, description="Teaching jobs that run at once (each trains in its own process).")
    job_history: int = Field(200, ge=1, description="Finished jobs kept for GET /v1/jobs (in memory: jobs do not survive a restart).")
    max_upload_rows: int = Field(20_000, ge=1, description="Most examples one upload may hold (the body limit applies too).")
    teach_options: dict[str, Any] = Field(
        default_factory=dict, description="TeachConfig overrides (domain_lm.train.task_adapter), e.g. {\"threads\": 1, \"epochs\": 2}."
    )
    lora_slots: int = Field(2, ge=0, description="vLLM: adapters a batch may mix, for adapters loaded while serving (0: none).")
    max_lora_rank: int = Field(16, ge=1, description="vLLM: the largest LoRA rank an adapter loaded while serving may have.")
    label_probabilities: bool = Field(
        False,
        description="Every label answer carries a probability (every label scored: about 1.7x the latency of a constrained answer). "
        "Off, a label answer is scored only when it needs it: the task abstains below a threshold, its taught version is "
        "calibrated, or the request asks (\"confidence\": true).",
    )
    max_scored_choices: int = Field(
        16,
        ge=2,
        description="Label tasks with more labels answer by constrained decoding, without a probability (scoring costs a prompt "
        "pass per node of the labels' token trie).",
    )

    auth: bool = Field(True, description="Require API keys. Only disable for local development (--no-auth).")
    api_keys: str | None = Field(None, description="Key entries (JSON list or 'id:sha256[:task|task][:admin]' comma list).")
    api_keys_file: str | None = Field(
        None, description="YAML/JSON file with `keys: [{id, sha256, tasks, admin}]`; re-read when it changes."
    )
    keys_reload_interval_s: float = Field(1.0, ge=0, description="Minimum seconds between checks of the key file for changes.")

    max_queue: int = Field(64, ge=1, description="Requests in flight (queued or generating); beyond it: 429.")
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request generation timeout; beyond it: 504.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; beyond it: 413.")
    max_input_chars: int = Field(50_000, ge=1, description="Largest single input field, whatever the template allows.")
    max_batch_items: int = Field(64, ge=1)
    max_chat_tokens: int = Field(2048, ge=1, description="Upper bound on max_tokens for chat completions.")

    log_bodies: bool = Field(False, description="Also log (PII-masked) request inputs in the audit log.")
    audit_log: str | None = Field(None, description="Audit log file (JSON lines); None: the process log.")
    audit_log_max_bytes: int = Field(100 * 2**20, ge=0, description="Rotate the audit file at this size (0: never).")
    audit_log_backups: int = Field(10, ge=0, description="Rotated audit files kept.")
    metrics_public: bool = Field(True, description="Serve /metrics without an API key (for Prometheus; never route it through an ingress).")
    docs: bool = Field(True, description="Serve /docs and /openapi.json (turned off in the shipped deploy configs).")
