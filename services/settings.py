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
