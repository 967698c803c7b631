"""Throughput and latency of the task endpoint vs a raw vLLM OpenAI server, same model and prompts.

    python bench/serve_bench.py [--model PATH] [--task sentiment] [--quick] [--out bench.json]

Both servers run one after the other (never at once, so they do not share the CPU), each with the
same engine settings (the service's: fp32, eager, the CPU cache block size, prefix caching and the
small-host worker thread binding of ``inference.vllm_engine``). The raw server gets exactly the prompts the task endpoint renders (the
template's messages) and the same decode-time constraint (``structured_outputs`` choice / json),
so the ratio measures what the service layer costs: validation, rendering, admission, parsing.
Inputs are distinct real texts (the task's embedded held-out examples when it has some, else its
template examples), so no request finds its whole prompt in the prefix cache; only the templated
prefix every request of the task shares. Default model: SmolLM2-135M from the model store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from domain_lm.serve_demo import free_port, stop_service, wait_ready

REPO = Path(__file__).resolve().parents[1]


def start(cmd: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **(extra_env or {})}
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


async def load(url: str, bodies: list[dict], concurrency: int, check) -> dict:
    """Send every body with at most ``concurrency`` in flight; latency per request, overall rate."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0

    async with httpx.AsyncClient(timeout=600) as client:

        async def one(body: dict) -> None:
            nonlocal errors
            async with sem:
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200 or not check(r.json()):
                    errors += 1

        await one(bodies[0])  # warm-up (grammar compile, first-batch allocations, the task's shared prefix)
        latencies.clear()
        errors = 0
        bodies = bodies[1:]  # each measured prompt is new to the engine's prefix cache
        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "requests": len(bodies),
        "errors": errors,
        "rps": len(bodies) / wall,
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
        "p99_ms": q[98] * 1000,
    }


def task_inputs(template, n: int) -> list[tuple[str, dict]]:
    """``n`` distinct (lang, inputs) for the task: its embedded held-out examples (real, distinct
    texts), else its template examples, repeated."""
    from domain_lm.data import embedded

    real = [ex for name in embedded.available("task", template.name) for ex in embedded.split_by_doc(embedded.task_examples(name))[1]]
    if real:
        return [(ex.lang, dict(ex.inputs)) for ex in real[:n]]
    examples = [(ex.lang, dict(ex.inputs)) for ex in template.examples]
    return [examples[i % len(examples)] for i in range(n)]


def row(r: dict) -> str:
    return f"{r['rps']:>7.2f} {r['p50_ms']:>7.0f} {r['p95_ms']:>7.0f} {r['p99_ms']:>7.0f}"


def service_overhead(templates: str, task: str, bodies: list[dict], concurrency: int = 32) -> dict:
    """CPU time the service layer adds per request (auth, validation, rendering, admission, parsing,
    metrics, audit), measured in-process with an instant fake engine, so it does not depend on the model
    or on how busy the machine's other cores are. The in-process HTTP client's own CPU time is
    included, so this is an upper bound."""
    from domain_lm.inference.fake import FakeEngine
    from services.app import create_app
    from services.settings import ServiceSettings

    app = create_app(ServiceSettings(auth=False, templates_dir=templates, max_queue=100000), engine=FakeEngine())

    async def go() -> float:
        sem = asyncio.Semaphore(concurrency)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:

            async def one(body: dict) -> None:
                async with sem:
                    r = await c.post(f"/v1/tasks/{task}", json=body)
                    assert r.status_code == 200, r.text

            await one(bodies[0])
            t0 = time.process_time()
            await asyncio.gather(*(one(b) for b in bodies))
            return time.process_time() - t0

    cpu = asyncio.run(go())
    return {"requests": len(bodies), "cpu_ms_per_request": cpu * 1000 / len(bodies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="Model directory (default: smollm2-135m from the store).")
    ap.add_argument("--templates", default=str(REPO / "task_templates"))
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=0,
                    help="Requests per level (default: 4x concurrency, at least 16; --quick: 2x, at least 8).")
    ap.add_argument("--quick", action="store_true", help="A short run.")
    ap.add_argument("--kv-cache-gib", type=float, default=1.0)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--dtype", help="Weights dtype of both servers (default: the service's choice on this host: "
                                    "bfloat16 on a CPU with AMX, else float32).")
    ap.add_argument("--out", type=Path, help="Write the results as JSON here.")
    args = ap.parse_args()

    from domain_lm.models.registry import resolve
    from domain_lm.tasks import TemplateRegistry

    model = Path(args.model) if args.model else resolve("smollm2-135m")
    template = TemplateRegistry.load(args.templates).get(args.task)
    levels = [int(c) for c in args.concurrency.split(",")]

    def n_for(c: int) -> int:
        return args.requests or (max(8, 2 * c) if args.quick else max(32, 4 * c))

    # one warm-up request per level, then the measured ones, all distinct
    examples = task_inputs(template, sum(n_for(c) + 1 for c in levels))

    # Same prompts and constraints for both servers.
    from domain_lm.inference.fake import FakeEngine
    from domain_lm.inference.tasks import TaskRunner

    runner = TaskRunner(FakeEngine())
    task_bodies, raw_bodies = [], []
    for lang, inputs in examples:
        req = runner.build_request(template, inputs, lang)
        task_bodies.append({"input": inputs, "lang": lang})
        so = {"choice": req.choices} if req.choices else {"json": req.json_schema} if req.json_schema else {"regex": req.regex}
        raw_bodies.append({"model": "m", "messages": req.messages, "max_tokens": req.max_tokens, "temperature": 0,
                           "structured_outputs": so})

    # level -> its slice of the bodies: a warm-up and n_for(c) measured requests, none shared between levels
    ends = [sum(n_for(c) + 1 for c in levels[: i + 1]) for i in range(len(levels))]
    spans = list(zip([0, *ends[:-1]], ends))

    from domain_lm.inference.vllm_engine import CPU_BLOCK_SIZE, _on_cpu, cpu_inference_dtype, cpu_thread_binding

    # Both servers in the same dtype: --dtype, else the service's own choice on this host.
    dtype = args.dtype or (cpu_inference_dtype() if _on_cpu() else "auto")
    overhead = service_overhead(args.templates, args.task, (task_bodies * 4)[:400])
    kv = str(int(args.kv_cache_gib * 2**30))
    logs = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    results: dict[str, dict] = {}

    port = free_port()
    svc = start(
        [sys.executable, "-m", "domain_lm", "serve", "--model", str(model), "--templates", args.templates, "--engine", "vllm", "--no-auth",
         "--host", "127.0.0.1", "--port", str(port), "--max-queue", "100000", "--kv-cache-gib", str(args.kv_cache_gib),
         "--max-model-len", str(args.max_model_len), "--log-level", "WARNING", "--set", f"serve.dtype={dtype}"],
        logs / "service.log",
    )
    try:
        wait_ready(svc, f"http://127.0.0.1:{port}", log_path=logs / "service.log")
        results["task_endpoint"] = {
            str(c): asyncio.run(load(f"http://127.0.0.1:{port}/v1/tasks/{args.task}", task_bodies[a:b], c, lambda r: "output" in r))
            for c, (a, b) in zip(levels, spans)
        }
    finally:
        stop_service(svc, timeout=60)

    # The raw server with the engine settings the service uses on this host: its KV block size and
    # its worker thread binding (``inference.vllm_engine``), so the ratio is the service layer's alone.
    on_cpu = _on_cpu()
    bind = cpu_thread_binding() if on_cpu else None
    port = free_port()
    raw = start(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", "m",
         "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--enforce-eager", "--max-model-len", str(args.max_model_len),
         "--kv-cache-memory-bytes", kv, "--max-num-seqs", "64", "--seed", "0", "--enable-prefix-caching",
         *(["--block-size", str(CPU_BLOCK_SIZE)] if on_cpu else []),
         "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}), "--disable-log-stats"],
        logs / "vllm.log",
        {"VLLM_CPU_OMP_THREADS_BIND": bind} if bind else None,
    )
    try:
        wait_ready(raw, f"http://127.0.0.1:{port}", log_path=logs / "vllm.log", probe="/health")
        results["raw_vllm"] = {
            str(c): asyncio.run(load(f"http://127.0.0.1:{port}/v1/chat/completions", raw_bodies[a:b], c, lambda r: bool(r.get("choices"))))
            for c, (a, b) in zip(levels, spans)
        }
    finally:
        stop_service(raw, timeout=60)

    print(f"model: {model} ({dtype})\ntask: {args.task}  (logs: {logs})\n")
    cols = f"{'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
    print(f"{'conc':>4} | task endpoint {cols} | raw vLLM {cols} | {'ratio':>6} | errors")
    for c in levels:
        t, r = results["task_endpoint"][str(c)], results["raw_vllm"][str(c)]
        ratio = t["rps"] / r["rps"] if r["rps"] else float("nan")
        results.setdefault("ratio", {})[str(c)] = ratio
        print(f"{c:>4} | {'':13} {row(t)} | {'':8} {row(r)} | {ratio:>6.1%} | {t['errors']}/{r['errors']}")
    # At c=1 every request pays the layer's CPU time once; the share of the raw latency it adds bounds
    # the throughput loss on a quiet machine (the engine runs in other processes).
    p50_raw = results["raw_vllm"][str(levels[0])]["p50_ms"]
    overhead["share_of_raw_p50_at_c1"] = overhead["cpu_ms_per_request"] / p50_raw
    print(f"\nservice layer CPU time: {overhead['cpu_ms_per_request']:.2f} ms/request"
          f" (fake engine, in-process, {overhead['requests']} requests)"
          f" = {overhead['share_of_raw_p50_at_c1']:.1%} of the raw server's p50 at c={levels[0]}")
    results["service_overhead"] = overhead
    if args.out:
        args.out.write_text(json.dumps({"model": str(model), "dtype": dtype, "task": args.task, **results}, indent=2))


if __name__ == "__main__":
    main()
