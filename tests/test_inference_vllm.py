"""The service on the REAL vLLM CPU engine with the tiny model (engine started once per module).

Every bundled task in every language is answered with a contract-satisfying output; a template
registered with PUT is answered without a restart; a burst beyond the queue limit gets 429s while
the admitted requests are answered correctly; a LoRA adapter is served per request.
"""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest

from .conftest import REPO, requires_vllm

pytestmark = [pytest.mark.vllm, requires_vllm]

KEY = "test-key-vllm"


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A random (non-zero) LoRA adapter on the tiny model, so the adapter path really changes logits."""
    import torch
    from peft import LoraConfig, get_peft_model

    from domain_lm.models.loading import load_causal_lm

    torch.manual_seed(0)
    model = get_peft_model(
        load_causal_lm(tiny_model_dir), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    out = tmp_path_factory.mktemp("lora-demo")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapter_dir):
    from domain_lm.inference import create_engine

    eng = create_engine(
        tiny_model_dir,
        kind="vllm",
        adapters={"demo": adapter_dir},
        model_name="tiny",
        gpu_memory_utilization=0.05,  # on CPU: the KV-cache share of RAM (see vllm_engine._cpu_kv_bytes)
        max_model_len=2048,
    )
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def templates_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("templates") / "task_templates"
    shutil.copytree(REPO / "task_templates", d)
    return d


def make_app(engine, templates_dir, **kw):
    from services.app import create_app
    from services.security import hash_key
    from services.settings import ServiceSettings

    settings = ServiceSettings(
        api_keys=f"tester:{hash_key(KEY)}:*:admin", templates_dir=str(templates_dir), template_reload_interval_s=0, **kw
    )
    return create_app(settings, engine=engine)


async def _post_all(app, calls):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc", headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
        return await asyncio.gather(*(c.post(url, json=body) for url, body in calls))


def test_engine_contract_directly(engine):
    from domain_lm.inference import GenerationRequest

    msgs = [{"role": "user", "content": "Is this about credit cards or loans?"}]
    label, free = engine.generate_batch(
        [GenerationRequest(messages=msgs, choices=["credit_card", "loan", "other"]), GenerationRequest(messages=msgs, max_tokens=5)]
    )
    assert label.text in {"credit_card", "loan", "other"}
    assert free.completion_tokens == 5 and free.finish_reason == "length"
    assert label.prompt_tokens == free.prompt_tokens > 0


def test_every_bundled_task_satisfies_its_contract(engine, templates_dir):
    from domain_lm.tasks import TemplateRegistry

    reg = TemplateRegistry.load(templates_dir)
    calls, expect = [], []
    for t in reg:
        for lang in t.languages:
            ex = next(e for e in t.examples if e.lang == lang)
            calls.append((f"/v1/tasks/{t.name}", {"input": ex.inputs, "lang": lang}))
            expect.append((t, lang))
    assert {t.name for t, _ in expect} >= {"sentiment", "entities", "extraction", "report_summary", "key_points", "business_line"}
    responses = asyncio.run(_post_all(make_app(engine, templates_dir), calls))
    for (t, lang), r in zip(expect, responses):
        assert r.status_code == 200, (t.name, lang, r.text)
        body = r.json()
        # The returned output is exactly what the template's own contract check makes of the raw text
        # (grounded spans with their character offsets in the input).
        inputs = next(e for e in t.examples if e.lang == lang).inputs
        assert t.output.locate(t.parse_output(body["raw_text"], lang, inputs=inputs), inputs) == body["output"], (t.name, lang)
        assert body["model"] == "tiny" and body["usage"]["completion_tokens"] > 0
        if t.output.kind == "label":
            assert body["raw_text"] in t.choices(lang)


def test_put_template_is_answered_without_restart(engine, templates_dir):
    from fastapi.testclient import TestClient

    yaml_text = """
name: complaint
description: Is a customer message a complaint?
languages: [en]
metric: classification
inputs:
  text: {type: string, max_length: 500}
output:
  kind: label
  labels: [complaint, other]
prompts:
  en:
    variants: ["Is this a complaint? {{ text }}"]
examples:
  - {lang: en, inputs: {text: "You blocked my card for no reason!"}, output: complaint}
"""
    app = make_app(engine, templates_dir)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert c.post("/v1/tasks/complaint", json={"input": {"text": "My card was charged twice."}}).status_code == 404
        put = c.put("/v1/tasks/complaint", content=yaml_text, headers={"Content-Type": "application/yaml"})
        assert put.status_code == 200, put.text
        assert put.json()["version"] == 1 and (templates_dir / ".versions" / "complaint@1.yaml").is_file()  # the default store
        r = c.post("/v1/tasks/complaint", json={"input": {"text": "My card was charged twice."}})
        assert r.status_code == 200, r.text
        assert r.json()["output"] in {"complaint", "other"}


def test_burst_beyond_queue_limit_gets_429_and_service_stays_healthy(engine, templates_dir):
    from domain_lm.tasks import TemplateRegistry

    limit, n = 10, 100  # the numbers: 100 concurrent requests, a queue of 10
    app = make_app(engine, templates_dir, max_queue=limit)
    t = TemplateRegistry.load(templates_dir).get("sentiment")
    calls = [("/v1/tasks/sentiment", {"input": {"text": f"Net income rose {i} percent."}}) for i in range(n)]
    responses = asyncio.run(_post_all(app, calls))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}
    assert codes.count(429) >= n - 2 * limit and codes.count(200) >= limit
    for r in responses:
        if r.status_code == 200:
            assert r.json()["output"] in t.output.labels
    # Nothing stays admitted, and the service keeps answering.
    assert app.state.service.admission.in_flight == 0
    after = asyncio.run(_post_all(app, [("/v1/tasks/sentiment", {"input": {"text": "Profit fell."}})]))
    assert after[0].status_code == 200


def test_adapter_is_served_per_request(engine, templates_dir):
    from domain_lm.inference import GenerationRequest

    msgs = [{"role": "user", "content": "Summarise: revenue increased, costs decreased."}]
    base_req, lora_req = GenerationRequest(messages=msgs, max_tokens=24), GenerationRequest(messages=msgs, max_tokens=24, adapter="demo")
    solo_base, solo_lora = engine.generate_batch([base_req])[0].text, engine.generate_batch([lora_req])[0].text
    assert solo_base != solo_lora  # the random adapter changes the distribution
    # Batched together, in either order, each request keeps its own weights.
    assert [r.text for r in engine.generate_batch([base_req, lora_req])] == [solo_base, solo_lora]
    assert [r.text for r in engine.generate_batch([lora_req, base_req])] == [solo_lora, solo_base]
    responses = asyncio.run(
        _post_all(
            make_app(engine, templates_dir),
            [
                ("/v1/tasks/sentiment", {"input": {"text": "Profit fell."}, "adapter": "demo"}),
                ("/v1/tasks/sentiment", {"input": {"text": "Profit fell."}, "adapter": "nope"}),
            ],
        )
    )
    assert responses[0].status_code == 200 and responses[0].json()["adapter"] == "demo"
    assert responses[1].status_code == 400 and "nope" in responses[1].json()["detail"]["message"]


def test_chat_streams_tokens_as_they_arrive(engine, templates_dir):
    import json

    from domain_lm.inference import GenerationRequest

    req = GenerationRequest(messages=[{"role": "user", "content": "Profit rose in 2022."}], max_tokens=12)

    async def collect():
        return [r async for r in engine.stream(req)]

    parts = asyncio.run(collect())
    final = engine.generate_batch([req])[0]
    assert len(parts) >= 2 and parts[-1].text == final.text and parts[-1].completion_tokens == 12
    assert parts[-1].finish_reason == "length" and all(p.finish_reason == "" for p in parts[:-1])

    async def sse():
        transport = httpx.ASGITransport(app=make_app(engine, templates_dir))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://svc", headers={"Authorization": f"Bearer {KEY}"}, timeout=120
        ) as c:
            body = {"messages": req.messages, "max_tokens": 12, "temperature": 0, "stream": True}
            r = await c.post("/v1/chat/completions", json=body)
            return r.text

    events = [line[6:] for line in asyncio.run(sse()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"][0]["delta"].get("content")]
    assert "".join(content) == final.text and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_invalid_sampling_values_are_client_errors_not_500(engine, templates_dir):
    """Issue 15, finding 8: ``"stop": ""`` answered 500 (vLLM's validation error was not mapped)."""
    from domain_lm.inference import EngineError, GenerationRequest

    msgs = [{"role": "user", "content": "Profit rose in 2022."}]
    with pytest.raises(EngineError, match="vLLM rejected the request"):
        engine.generate_batch([GenerationRequest(messages=msgs, max_tokens=4, stop=[""])])
    app = make_app(engine, templates_dir)
    long_prompt = "bank " * 3000  # under the service's character ceiling, over the model's 2048 tokens
    empty_stop, too_long, ok = asyncio.run(
        _post_all(
            app,
            [
                ("/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "stop": ""}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4}),
                ("/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "stop": ["\n\n"]}),
            ],
        )
    )
    assert empty_stop.status_code == 422 and "stop" in empty_stop.text
    assert too_long.status_code == 400 and too_long.json()["detail"]["error"] == "engine_rejected", too_long.text
    assert ok.status_code == 200
    assert engine.is_ready()  # the engine survived both


def test_a_greedy_label_walks_the_token_trie_one_step_per_branch(tiny_model_dir):
    """The label fast path asks the engine for one token only where the labels branch, among the
    branch's tokens, and the answer is the path its greedy picks spell (a stub engine prefers fixed tokens)."""
    from types import SimpleNamespace

    from domain_lm.inference import GenerationRequest
    from domain_lm.inference._loop import LoopThread
    from domain_lm.inference.vllm_engine import VllmEngine
    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    choices = ["card arrival", "card linking", "loan", "loan top up"]
    ids = {c: tok(c, add_special_tokens=False)["input_ids"] for c in choices}
    assert ids["card arrival"][0] == ids["card linking"][0] and ids["loan top up"][: len(ids["loan"])] == ids["loan"]
    prefer = set(ids["card linking"])
    asked: list[tuple[int, list[int]]] = []

    class StubLLM:
        async def generate(self, prompt, params, request_id, lora_request=None):
            allowed = list(params.allowed_token_ids)
            assert params.max_tokens == 1 and params.temperature == 0.0 and len(allowed) > 1
            asked.append((len(prompt["prompt_token_ids"]), allowed))
            pick = next((t for t in allowed if t in prefer), allowed[0])
            yield SimpleNamespace(outputs=[SimpleNamespace(token_ids=[pick])])

    eng = object.__new__(VllmEngine)
    eng.tokenizer, eng.adapters, eng._llm, eng._lora, eng._loop = tok, {}, StubLLM(), {}, LoopThread("stub")
    try:
        msgs = [{"role": "user", "content": "Which intent?"}]
        got = eng.generate_batch([GenerationRequest(messages=msgs, choices=choices)])[0]
        n_prompt = got.prompt_tokens
        branch = next(i for i, (a, b) in enumerate(zip(ids["card arrival"], ids["card linking"])) if a != b)
        assert got.text == "card linking" and got.completion_tokens == len(ids["card linking"])
        # a step at the root (card... / loan...), then one where "card arrival" and "card linking" part
        assert [n - n_prompt for n, _ in asked] == [0, branch]
        assert sorted(asked[0][1]) == sorted({ids["card arrival"][0], ids["loan"][0]})
        # "loan" is a prefix of "loan top up": end of sequence is one of the branch's tokens
        asked.clear()
        prefer.clear()
        prefer.update({ids["loan"][0], tok.eos_token_id})
        got = eng.generate_batch([GenerationRequest(messages=msgs, choices=choices)])[0]
        assert got.text == "loan" and tok.eos_token_id in asked[-1][1]
    finally:
        eng._loop.stop()
