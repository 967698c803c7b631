"""Issue 14 acceptance: a new task taught while serving, on the REAL vLLM CPU engine with the tiny model.

PUT a template, upload labelled examples, the job trains a LoRA adapter in a child process and
hot-loads it into the running engine (``AsyncLLM.add_lora``), the task answers with it; meanwhile a
stream of requests to other tasks sees no error and the engine is never restarted. Also: label
scores from vLLM equal the transformers engine's (same model, same adapter), and a taught version
is loaded again when the service starts over.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import pytest

from .conftest import REPO, requires_vllm

pytestmark = [pytest.mark.vllm, pytest.mark.slow, requires_vllm]

KEY = "teach-key-vllm"
STANCE = """
name: stance
description: Is a finance tweet bullish, bearish or neutral?
languages: [en]
metric: classification
engine: llm
inputs:
  text: {type: string, max_length: 500}
output:
  kind: label
  labels: [bullish, bearish, neutral]
prompts:
  en:
    system: Answer with one word.
    variants: ["Is this tweet bullish, bearish or neutral? {{ text }}"]
examples:
  - {lang: en, inputs: {text: "Shares hit a record high after earnings beat."}, output: bullish}
"""


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from domain_lm.inference import create_engine

    # lora_slots: LoRA on from the start, so adapters trained while serving can be added. float32: the
    # label scores are compared with the transformers engine's to 2e-3 (bf16, the default on an AMX
    # CPU, is exercised by tests/test_inference_vllm.py).
    eng = create_engine(tiny_model_dir, kind="vllm", model_name="tiny", gpu_memory_utilization=0.05, max_model_len=2048, lora_slots=2,
                        dtype="float32")
    yield eng
    eng.close()


def make_app(engine, root, **kw):
    from services.app import create_app
    from services.security import hash_key
    from services.settings import ServiceSettings

    templates = root / "task_templates"
    if not templates.exists():
        shutil.copytree(REPO / "task_templates", templates)
    settings = ServiceSettings(
        api_keys=f"tester:{hash_key(KEY)}:*:admin",
        templates_dir=str(templates),
        template_reload_interval_s=0,
        template_store=str(root / "store"),
        teach_options={"max_steps": 6, "batch_size": 4, "max_eval": 30, "n_boot": 200, "threads": 1},
        **kw,
    )
    return create_app(settings, engine=engine)


def tweets(n: int) -> bytes:
    from domain_lm.data import embedded

    rows = embedded.records("twitter_fin_sentiment/sentiment")[::7][:n]
    return "\n".join(json.dumps({"text": r["text"], "label": r["label"]}) for r in rows).encode()


OTHER_TASKS = [
    ("/v1/tasks/sentiment", {"input": {"text": "Net interest income rose 8 percent."}}),
    ("/v1/tasks/entities", {"input": {"text": "HSBC opened a branch in Paris."}}),
    ("/v1/tasks/business_line", {"input": {"text": "The client wants a mortgage for a flat in Leeds."}}),
]


def test_teach_a_task_while_serving_with_no_error_and_no_restart(engine, tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    app = make_app(engine, tmp_path)
    state = app.state.service
    headers = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app, headers=headers) as c:
        put = c.put("/v1/tasks/stance", content=STANCE, headers={"Content-Type": "application/yaml"})
        assert put.status_code == 200, put.text
        before = c.post("/v1/tasks/stance", json={"input": {"text": "Stocks crash."}, "confidence": True}).json()
        assert before["adapter"] is None and before["engine"] == "llm" and before["confidence"] is not None

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc", headers=headers, timeout=300) as c:
            up = await c.post("/v1/tasks/stance/examples", content=tweets(120), headers={"Content-Type": "application/jsonl"})
            assert up.status_code == 202, up.text
            job_id = up.json()["job"]
            stream: list[httpx.Response] = []
            phases: set[str] = set()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 900:
                # the concurrent stream: other tasks keep being answered while the job trains and loads
                stream += await asyncio.gather(*(c.post(url, json=body) for url, body in OTHER_TASKS))
                job = (await c.get(f"/v1/jobs/{job_id}")).json()
                phases.add(job["phase"])
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    return job, stream, phases
                await asyncio.sleep(0.2)
            raise AssertionError("the job did not finish in 15 minutes")

    job, stream, phases = asyncio.run(scenario())
    assert job["state"] == "succeeded", job
    assert "training" in phases  # the stream ran while the adapter was being trained
    assert len(stream) >= 30 and [r.status_code for r in stream] == [200] * len(stream), [r.text for r in stream if r.status_code != 200][
        :3
    ]
    assert state.engine is engine and engine.is_ready()  # the same engine throughout: no restart
    assert "stance@1" in engine.adapters and job["version"] == 1
    assert set(job["result"]["systems"]) == {"classical", "adapter", "zero_shot", "few_shot"}
    with TestClient(app, headers=headers) as c:
        after = c.post("/v1/tasks/stance", json={"input": {"text": "Stocks crash."}}).json()
        assert after["adapter"] == "stance@1" and after["engine"] == "llm" and after["calibrated"] is True
        assert after["output"] in ("bullish", "bearish", "neutral") and 0 < after["confidence"] <= 1
        old = c.post("/v1/tasks/stance", json={"input": {"text": "Stocks crash."}, "version": 1}).json()
        assert old["version"] == 1 and old["adapter"] == "stance@1"  # the template says engine: llm in every version
        serving = c.get("/v1/tasks/stance").json()["serving"]
        assert serving["adapter"] == "stance@1" and serving["why"].startswith("engine: llm")
        # The adapter really is in the answer path: its label scores differ from the base model's.
        from domain_lm.inference import GenerationRequest

        msgs = [{"role": "user", "content": "Is this tweet bullish, bearish or neutral? Stocks crash."}]
        base, tuned = engine.generate_batch(
            [
                GenerationRequest(messages=msgs, choices=["bullish", "bearish", "neutral"], score_choices=True, adapter=a)
                for a in (None, "stance@1")
            ]
        )
        assert base.choice_logprobs != tuned.choice_logprobs


def test_vllm_label_scores_equal_the_transformers_engine(engine, tiny_model_dir):
    from domain_lm.inference import GenerationRequest, create_engine

    msgs = [{"role": "user", "content": "Is this about a card, a loan or something else? My card never arrived."}]
    req = GenerationRequest(messages=msgs, choices=["card", "loan", "something else", "card_arrival"], score_choices=True)
    hf = create_engine(tiny_model_dir, kind="hf")
    try:
        want = hf.generate_batch([req])[0]
    finally:
        hf.close()
    got = engine.generate_batch([req])[0]
    assert got.text == want.text
    for choice, lp in want.choice_logprobs.items():
        assert got.choice_logprobs[choice] == pytest.approx(lp, abs=2e-3)


def test_a_restarted_service_serves_the_taught_version(engine, tmp_path_factory, tmp_path):
    """What the first test taught is on disk; a new app over the same store loads and serves it."""
    from fastapi.testclient import TestClient

    root = tmp_path
    first = make_app(engine, root)
    with TestClient(first, headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert c.put("/v1/tasks/stance", content=STANCE, headers={"Content-Type": "application/yaml"}).status_code == 200
        job = c.post(
            "/v1/tasks/stance/examples", content=tweets(60), params={"adapter": "false"}, headers={"Content-Type": "application/jsonl"}
        )
        assert job.status_code == 202
        for _ in range(600):
            status = c.get(f"/v1/jobs/{job.json()['job']}").json()
            if status["state"] != "running" and status["state"] != "queued":
                break
            time.sleep(0.5)
        assert status["state"] == "succeeded", status
    again = make_app(engine, root)
    with TestClient(again, headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert c.get("/v1/jobs").json() == []  # jobs live in memory only
        training = c.get("/v1/tasks/stance/training").json()
        assert [v["version"] for v in training["versions"]] == [1] and training["versions"][0]["adapter"] is None
        assert training["serving"]["store_version"] == 1
