"""``domain-lm serve``: the task service on a model directory, store name or pipeline run.

    domain-lm serve --model runs/demo --templates task_templates/ [--engine vllm|hf] \\
        [--adapter name=path ...] [--host 127.0.0.1 --port 8000 --max-queue 64] [--no-auth] \\
        [--template-store /var/lib/domain-lm/templates]
    domain-lm serve keygen --id alice --tasks sentiment,entities   # a new key and its hashed entry

This command belongs to the service package: ``domain_lm`` does not import ``services``. It is
registered into the ``domain-lm`` command line through the ``domain_lm.commands`` entry point
(pyproject.toml), and also runs as ``python -m services``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from domain_lm.cli.common import ConfigOpt, OverrideOpt, config_from
from domain_lm.errors import ConfigError

app = typer.Typer(help="Serve task endpoints over REST (vLLM or transformers).")


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


def _engine_options(
    kind: str,
    section: Any,
    gpu_memory_utilization: float | None,
    max_model_len: int | None,
    kv_cache_gib: float | None,
    tensor_parallel_size: int,
) -> dict[str, Any]:
    if kind not in ("vllm", "auto"):
        return {}
    options: dict[str, Any] = {
        "dtype": section.dtype,
        "gpu_memory_utilization": gpu_memory_utilization or section.gpu_memory_utilization,
        "max_model_len": max_model_len or section.max_model_len,
        "tensor_parallel_size": tensor_parallel_size,
    }
    if kv_cache_gib:
        options["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
    return options


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model dir, adapter dir, run dir or store name.")] = None,
    templates: Annotated[Optional[Path], typer.Option("--templates", "-t", help="Task template directory.")] = None,
    template_store: Annotated[
        Optional[Path], typer.Option("--template-store", help="Writable store for templates registered at run time.")
    ] = None,
    adapter_store: Annotated[
        Optional[Path], typer.Option("--adapter-store", help="Writable task store for teaching (default: <template store>/adapters).")
    ] = None,
    no_teach: Annotated[bool, typer.Option("--no-teach", help="Refuse example uploads and training jobs.")] = False,
    engine: Annotated[Optional[str], typer.Option("--engine", help="auto, vllm or hf.")] = None,
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", help="LoRA adapter NAME=PATH (repeatable).")] = None,
    host: Annotated[Optional[str], typer.Option("--host")] = None,
    port: Annotated[Optional[int], typer.Option("--port")] = None,
    max_queue: Annotated[Optional[int], typer.Option("--max-queue", help="Requests in flight before 429.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Per-request timeout (s) before 504.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Disable API keys (local development only).")] = False,
    api_keys_file: Annotated[
        Optional[Path], typer.Option("--api-keys-file", help="YAML/JSON file of hashed keys (re-read on change).")
    ] = None,
    audit_log: Annotated[Optional[Path], typer.Option("--audit-log", help="Write audit lines (JSON) to this file (rotated).")] = None,
    log_bodies: Annotated[bool, typer.Option("--log-bodies", help="Include PII-masked inputs in audit lines.")] = False,
    no_docs: Annotated[bool, typer.Option("--no-docs", help="Do not serve /docs and /openapi.json.")] = False,
    gpu_memory_utilization: Annotated[
        Optional[float], typer.Option("--gpu-memory-utilization", help="vLLM memory share (RAM share on CPU).")
    ] = None,
    max_model_len: Annotated[Optional[int], typer.Option("--max-model-len")] = None,
    kv_cache_gib: Annotated[
        Optional[float], typer.Option("--kv-cache-gib", help="vLLM KV cache size (GiB), instead of a memory share.")
    ] = None,
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", help="GPUs per model (vLLM).")] = 1,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
) -> None:
    """Start the service (OpenAPI docs at /docs unless --no-docs)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from domain_lm.cli.serve import resolve_model
    from services.app import create_app
    from services.logs import configure_logging
    from services.settings import ServiceSettings

    cfg = config_from(config, overrides)
    s = cfg.serve
    if model is None:
        raise ConfigError("Give --model: a model directory, an adapter directory, a run directory (runs/<name>) or a store name.")
    model_dir, found_adapters = resolve_model(model)
    engine_kind = engine or s.engine
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "model_name": Path(model).name if Path(model).is_dir() else model,
        "engine": engine_kind,
        "engine_options": _engine_options(engine_kind, s, gpu_memory_utilization, max_model_len, kv_cache_gib, tensor_parallel_size),
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
    flags = {
        "template_store": str(template_store) if template_store else None,
        "adapter_store": str(adapter_store) if adapter_store else None,
        "teach": False if no_teach else None,
        "api_keys_file": str(api_keys_file) if api_keys_file else None,
        "audit_log": str(audit_log) if audit_log else None,
        "auth": False if no_auth else None,
        "log_bodies": True if log_bodies else None,
        "docs": False if no_docs else None,
    }
    kwargs.update({k: v for k, v in flags.items() if v is not None})
    settings = ServiceSettings(**kwargs)
    configure_logging(log_level.upper(), settings.audit_log, settings.audit_log_max_bytes, settings.audit_log_backups)
    application = create_app(settings)
    # Our audit line (request id, key, client, route, status) replaces uvicorn's access line, which
    # would write full URLs, query strings included, into the log.
    uvicorn.run(application, host=host or s.host, port=port or s.port, log_config=None, access_log=False, timeout_graceful_shutdown=10)


@app.command("keygen")
def keygen(
    key_id: Annotated[str, typer.Option("--id", help="Key id shown in audit logs.")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated task names, 'chat', or '*'.")] = "*",
    admin: Annotated[bool, typer.Option("--admin", help="May register templates (PUT) for its tasks.")] = False,
) -> None:
    """Print a new API key (give it to the client) and its hashed entry (give it to the service)."""
    from services.security import hash_key, new_key

    key = new_key()
    entry = {"id": key_id, "sha256": hash_key(key), "tasks": [t.strip() for t in tasks.split(",") if t.strip()], "admin": admin}
    typer.echo(f"key:   {key}")
    typer.echo(f"entry: {json.dumps(entry)}")
