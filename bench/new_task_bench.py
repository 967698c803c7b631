"""A new task in minutes, without a redeploy (issue 14): the real service, the real SmolLM2, real data.

    python bench/new_task_bench.py [--data ../shared/data] [--examples 1000] [--tasks fpb,banking77]
                                   [--model smollm2-135m] [--engine vllm] [--set epochs=1 ...] [--out result.json]

Starts ``domain-lm serve`` (vLLM on the CPU, a writable template store), and for each task does what
a bank user would: PUT a new template, upload at most ``--examples`` labelled examples drawn
(seeded) from the shared data (the service splits them: 80% train, 20% held out), follow the job,
and read the comparison on the held-out examples. While a job runs, a probe keeps asking another
task (the bundled ``sentiment``) and records its latency and errors: what serving costs while
training. Printed per task: zero-shot, few-shot, adapter and classical scores with 95% bootstrap
intervals, the wall time from upload to the adapter serving, and what serves and why.

Tasks: ``fpb`` (Financial PhraseBank sentence sentiment, 3 classes; CC BY-NC-SA, read from the
shared data, never copied) and ``banking77`` (77 customer intents). Goals (2 CPU cores): the
adapter serves within 10 minutes of the upload, and on the three-class task it beats zero-shot by
at least 0.3 weighted F1.

Measured 2026-11-29 (2 cores, vLLM CPU, defaults; weighted F1 on the held-out examples, 95% CI):
  fpb (778 train / 200 scored): zero-shot 0.050, few-shot 0.352, adapter 0.407 [0.333, 0.493],
    classical 0.663; adapter - zero-shot +0.358 [+0.264, +0.459]; adapter serving 586 s after upload.
  banking77 (826 / 174): zero-shot 0.001, few-shot 0.482, adapter 0.247, classical 0.631; adapter
    serving 521 s after upload. Both tasks then serve with the classical model (at least as good).
  Another task during the jobs: 1,117 requests, 0 errors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from domain_lm.serve_demo import free_port, stop_service, wait_ready

REPO = Path(__file__).resolve().parents[1]
GOAL_SERVING_S = 600
GOAL_GAIN = 0.3

FPB_TEMPLATE = """
name: fpb_sentiment
description: Sentiment of a sentence from financial news, for an investor (Financial PhraseBank style).
languages: [en]
metric: classification
inputs:
  text: {type: string, max_length: 1000, description: One sentence of financial news.}
output:
  kind: label
  labels: [positive, negative, neutral]
prompts:
  en:
    system: You classify financial news for investors. Answer with one word.
    variants:
      - "Is this sentence positive, negative or neutral for an investor?\\n\\nSentence: {{ text }}"
examples:
  - {lang: en, inputs: {text: "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."}, output: positive}
  - {lang: en, inputs: {text: "The company will hold its annual meeting in Helsinki."}, output: neutral}
"""


def intent_template() -> str:
    """Banking77 as a new task: the bundled customer_intent template under a new name (77 labels)."""
    from domain_lm.tasks import TemplateRegistry

    data = TemplateRegistry.load(REPO / "task_templates").get("customer_intent").to_dict()
    data = {**data, "name": "bank_intent", "version": 1}
    return json.dumps(data, ensure_ascii=False)


TASKS = {
    "fpb": {"template": "fpb_sentiment", "file": "fpb/train.jsonl", "source": lambda: FPB_TEMPLATE, "three_class": True},
    # The shared file spells one label "reverted_card_payment?": mapped at upload, as a user would.
    "banking77": {"template": "bank_intent", "file": "banking77/train.jsonl", "source": intent_template, "three_class": False,
                  "params": {"label_map": json.dumps({"reverted_card_payment?": "reverted_card_payment"})}},
}


def sample(path: Path, n: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return [{"text": r["text"], "label": r["label"]} for r in rows[:n]]


class Probe:
    """Asks one task over and over from a thread; latencies (s) and error count."""

    def __init__(self, base: str, body: dict, pause: float = 0.5):
        self.base, self.body, self.pause = base, body, pause
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=300) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                r = c.post("/v1/tasks/sentiment", json=self.body)
                self.latencies.append(time.perf_counter() - t0)
                self.errors += r.status_code != 200
                self._stop.wait(self.pause)

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=600)

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        if not lat:
            return {"requests": 0, "errors": self.errors}
        q = statistics.quantiles(lat, n=20, method="inclusive") if len(lat) > 1 else lat * 19
        return {"requests": len(lat), "errors": self.errors, "p50_ms": round(q[9] * 1000), "p95_ms": round(q[18] * 1000)}


def idle_latency(base: str, body: dict, n: int = 15) -> dict:
    with httpx.Client(base_url=base, timeout=300) as c:
        c.post("/v1/tasks/sentiment", json=body)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            assert c.post("/v1/tasks/sentiment", json=body).status_code == 200
            lat.append(time.perf_counter() - t0)
    q = statistics.quantiles(lat, n=20, method="inclusive")
    return {"requests": n, "errors": 0, "p50_ms": round(q[9] * 1000), "p95_ms": round(q[18] * 1000)}


def teach_one(base: str, name: str, spec: dict, rows: list[dict], probe_body: dict) -> dict:
    with httpx.Client(base_url=base, timeout=600) as c:
        put = c.put(f"/v1/tasks/{spec['template']}", content=spec["source"](), headers={"Content-Type": "application/yaml"})
        put.raise_for_status()
        body = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
        t_upload = time.perf_counter()
        with Probe(base, probe_body) as probe:
            up = c.post(f"/v1/tasks/{spec['template']}/examples", content=body, params=spec.get("params"),
                        headers={"Content-Type": "application/jsonl"})
            if up.status_code != 202:
                raise SystemExit(f"{name}: upload refused {up.status_code}: {up.text[:1000]}")
            job_id = up.json()["job"]
            phases: dict[str, float] = {}
            serving_at = None
            while True:
                job = c.get(f"/v1/jobs/{job_id}").json()
                phases.setdefault(job["phase"], round(time.perf_counter() - t_upload, 1))
                if job["phase"] in ("serving", "comparing", "succeeded") and serving_at is None:
                    serving_at = time.perf_counter() - t_upload
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    break
                print(f"  [{name}] {time.perf_counter() - t_upload:6.0f}s {job['phase']:<10} {job['message']}", flush=True)
                time.sleep(5)
            during = probe.summary()
        if job["state"] != "succeeded":
            raise SystemExit(f"{name}: job {job['state']}: {job['error']}")
        # The task answers through the same endpoint with what serves it now.
        answer = c.post(f"/v1/tasks/{spec['template']}", json={"input": {"text": rows[-1]["text"]}}).json()
        forced = c.post(
            f"/v1/tasks/{spec['template']}", json={"input": {"text": rows[-1]["text"]}, "adapter": f"{spec['template']}@{job['version']}"}
        ).json()
    return {
        "task": name,
        "template": spec["template"],
        "examples": len(rows),
        "result": job["result"],
        "upload_to_serving_s": job["upload_to_serving_s"],
        "client_upload_to_serving_s": round(serving_at, 1) if serving_at else None,
        "job_wall_s": job["wall_s"],
        "phases_at_s": phases,
        "probe_during_job": during,
        "answer": {k: answer.get(k) for k in ("output", "engine", "adapter", "model", "confidence", "calibrated", "latency_ms")},
        "adapter_answer": {k: forced.get(k) for k in ("output", "engine", "adapter", "confidence", "latency_ms")},
    }


def print_task(r: dict) -> None:
    res = r["result"]
    ex = res["examples"]
    print(
        f"\n== {r['task']} ({r['template']}): {r['examples']} examples uploaded, {ex['train']} train / {ex['held']} held out, "
        f"scored on {ex['evaluated']} held-out examples"
    )
    print(f"{'system':<11} {res['metric']:>11} {'95% CI':>17} {'ECE before->after':>18} {'T':>5} {'seconds':>8}")
    for s in ("zero_shot", "few_shot", "adapter", "classical"):
        v = res["systems"].get(s)
        if v is None:
            continue
        c = v.get("calibration") or {}
        ece = f"{c['ece_before']:.3f}->{c['ece_after']:.3f}" if "ece_after" in c else "-"
        temp = f"{c['temperature']:.2f}" if c.get("calibrated") else "-"
        print(f"{s:<11} {v['score']:>11.3f} {'[%.3f, %.3f]' % tuple(v['ci']):>17} {ece:>18} {temp:>5} {v['seconds']:>8.1f}")
    for pair, d in res.get("diffs", {}).items():
        print(f"  {pair:<22} {d['diff']:+.3f}  95% CI [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
    train = res["systems"].get("adapter", {}).get("train", {})
    print(
        f"upload -> adapter serving: {r['upload_to_serving_s']:.0f} s (client saw it at {r['client_upload_to_serving_s']} s); "
        f"job total {r['job_wall_s']:.0f} s; training {res['timings'].get('train_s', 0):.0f} s "
        f"({train.get('steps')} steps on {train.get('train_examples')} examples, "
        f"loss {train.get('first_loss')} -> {train.get('final_loss')})"
    )
    print(f"phases (s after upload): {r['phases_at_s']}")
    print(f"classical model: {res['systems']['classical']['score']:.3f} {res['metric']}")
    print(f"serving: {res['serving']['why']}")
    print(f"answer now: {r['answer']}")
    print(f"answer with the adapter: {r['adapter_answer']}")
    p = r["probe_during_job"]
    print(f"another task while the job ran: {p}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--tasks", default="fpb,banking77")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="TeachConfig KEY=VALUE for the service.")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from domain_lm.models import registry

    model = Path(args.model) if Path(args.model).is_dir() else registry.resolve(args.model)
    options: dict[str, object] = {}
    for item in args.overrides:
        k, _, v = item.partition("=")
        options[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    work = Path(tempfile.mkdtemp(prefix="new-task-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = work / "service.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DOMAIN_LM_TEACH_OPTIONS": json.dumps(options)}
    cmd = [
        sys.executable,
        "-m",
        "services",
        "--model",
        str(model),
        "--templates",
        str(REPO / "task_templates"),
        "--template-store",
        str(work / "store"),
        "--engine",
        args.engine,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-auth",
        "--timeout",
        "600",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_ready(proc, base, timeout=900, log_path=log_path)
        print(f"service ready in {time.perf_counter() - t0:.0f} s ({args.engine}, {model.name}); teach options {options or 'defaults'}")
        probe_body = {"input": {"text": "Net interest income rose 8 percent and the bank raised its dividend."}}
        idle = idle_latency(base, probe_body)
        print(f"another task, idle: {idle}")
        results = []
        for name in args.tasks.split(","):
            spec = TASKS[name]
            rows = sample(args.data / spec["file"], args.examples, args.seed)
            r = teach_one(base, name, spec, rows, probe_body)
            print_task(r)
            results.append(r)
    finally:
        stop_service(proc)
    print("\n== goals (2 CPU cores)")
    for r in results:
        ok = r["upload_to_serving_s"] <= GOAL_SERVING_S
        print(
            f"{r['task']}: adapter serving {r['upload_to_serving_s']:.0f} s after upload "
            f"(goal <= {GOAL_SERVING_S} s): {'met' if ok else 'NOT met'}"
        )
        if TASKS[r["task"]]["three_class"]:
            s = r["result"]["systems"]
            gain = s["adapter"]["score"] - s["zero_shot"]["score"]
            print(
                f"{r['task']}: adapter - zero-shot = {gain:+.3f} weighted F1 "
                f"(goal >= +{GOAL_GAIN}): {'met' if gain >= GOAL_GAIN else 'NOT met'}"
            )
    print(f"another task, idle: {idle}; during the jobs: {[r['probe_during_job'] for r in results]}")
    if args.out:
        args.out.write_text(json.dumps({"idle": idle, "tasks": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
