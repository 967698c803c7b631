"""``domain-lm serve``: the task service on a model directory, store name or pipeline run.

    domain-lm serve --model runs/demo --templates task_templates/ [--engine vllm|hf] \
        [--adapter name=path ...] [--host 127.0.0.1 --port 8000 --max-queue 64] [--no-auth]
    domain-lm serve keygen --id alice --tasks sentiment,entities   # a new key and its hashed entry
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from domain_lm.cli.common import ConfigOpt, OverrideOpt, config_from
from domain_lm.errors import ConfigError, ModelNotFoundError

app = typer.Typer(help="Serve task endpoints over REST (vLLM or transformers).")

#: Stages whose ``model`` artefact is served for a run, most refined first.
MODEL_STAGES = ("ppo", "dpo", "sft", "pretrain", "base")


def resolve_model(spec: str) -> tuple[Path, dict[str, str]]:
    """A model directory and adapters for a model dir, adapter dir, run dir, stage dir or store name."""
    from domain_lm.models import registry
    from domain_lm.models.loading import adapter_base, is_adapter_dir
    from domain_lm.runstore import MANIFEST, Run, StageResult

    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return p, {}
        if is_adapter_dir(p):
            return Path(adapter_base(p)), {p.name: str(p)}
        if (p / MANIFEST).is_file():  # one stage directory
            result = StageResult.from_manifest(p, json.loads((p / MANIFEST).read_text(encoding="utf-8")))
            if result.has("model"):
                return result.artefact("model"), {}
        run = Run(p)
        for stage in MODEL_STAGES:
            result = run.load(stage)
            if result is not None and result.has("model"):
                return result.artefact("model"), {}
        raise ModelNotFoundError(f"{p} is neither a model directory, an adapter directory nor a run with a finished model stage ({', '.join(MODEL_STAGES)}).")
    return registry.resolve(spec), {}


def _adapters(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter {item!r} must look like NAME=PATH.")
        if not Path(path).is_dir():
            raise ConfigError(f"--adapter {name}: {path} is not a directory.")
        out[name] = path
    return out


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model dir, adapter dir, run dir or store name.")] = None,
    templates: Annotated[Optional[Path], typer.Option("--templates", "-t", help="Task template directory.")] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", help="auto, vllm or hf.")] = None,
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", help="LoRA adapter NAME=PATH (repeatable).")] = None,
    host: Annotated[Optional[str], typer.Option("--host")] = None,
    port: Annotated[Optional[int], typer.Option("--port")] = None,
    max_queue: Annotated[Optional[int], typer.Option("--max-queue", help="Requests in flight before 429.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Per-request timeout (s) before 504.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Disable API keys (local development only).")] = False,
    api_keys_file: Annotated[Optional[Path], typer.Option("--api-keys-file", help="YAML/JSON file of hashed keys.")] = None,
    audit_log: Annotated[Optional[Path], typer.Option("--audit-log", help="Write audit lines (JSON) to this file.")] = None,
    log_bodies: Annotated[bool, typer.Option("--log-bodies", help="Include PII-masked inputs in audit lines.")] = False,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option("--gpu-memory-utilization", help="vLLM memory share (RAM share on CPU).")] = None,
    max_model_len: Annotated[Optional[int], typer.Option("--max-model-len")] = None,
    kv_cache_gib: Annotated[Optional[float], typer.Option("--kv-cache-gib", help="vLLM KV cache size (GiB), instead of a memory share.")] = None,
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", help="GPUs per model (vLLM).")] = 1,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
) -> None:
    """Start the service (OpenAPI docs at /docs)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from services.app import create_app
    from services.logs import configure_logging
    from services.settings import ServiceSettings

    cfg = config_from(config, overrides)
    s = cfg.serve
    if model is None:
        raise ConfigError("Give --model: a model directory, an adapter directory, a run directory (runs/<name>) or a store name.")
    model_dir, found_adapters = resolve_model(model)
    engine_kind = engine or s.engine
    engine_options: dict[str, Any] = {}
    if engine_kind in ("vllm", "auto"):
        engine_options = {
            "dtype": s.dtype,
            "gpu_memory_utilization": gpu_memory_utilization or s.gpu_memory_utilization,
            "max_model_len": max_model_len or s.max_model_len,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if kv_cache_gib:
            engine_options["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "model_name": Path(model).name if Path(model).is_dir() else model,
        "engine": engine_kind,
        "engine_options": engine_options,
        "adapters": {**found_adapters, **_adapters(adapter)},
    }
    # Precedence: flag > DOMAIN_LM_* environment > pipeline config.
    for key, flag, from_config in (
        ("templates_dir", str(templates) if templates else None, cfg.tasks.templates_dir),
        ("max_queue", max_queue, s.max_queue),
        ("request_timeout_s", timeout, s.request_timeout_s),
    ):
        if flag is not None:
            kwargs[key] = flag
        elif f"DOMAIN_LM_{key.upper()}" not in os.environ:
            kwargs[key] = from_config
    if no_auth:
        kwargs["auth"] = False
    if api_keys_file:
        kwargs["api_keys_file"] = str(api_keys_file)
    if audit_log:
        kwargs["audit_log"] = str(audit_log)
    if log_bodies:
        kwargs["log_bodies"] = True
    settings = ServiceSettings(**kwargs)
    configure_logging(log_level.upper(), settings.audit_log)
    application = create_app(settings)
    uvicorn.run(application, host=host or s.host, port=port or s.port, log_config=None, timeout_graceful_shutdown=10)


@app.command("keygen")
def keygen(
    key_id: Annotated[str, typer.Option("--id", help="Key id shown in audit logs.")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated task names, 'chat', or '*'.")] = "*",
    admin: Annotated[bool, typer.Option("--admin", help="May register templates (PUT).")] = False,
) -> None:
    """Print a new API key (give it to the client) and its hashed entry (give it to the service)."""
    from services.security import hash_key, new_key

    key = new_key()
    entry = {"id": key_id, "sha256": hash_key(key), "tasks": [t.strip() for t in tasks.split(",") if t.strip()], "admin": admin}
    typer.echo(f"key:   {key}")
    typer.echo(f"entry: {json.dumps(entry)}")
