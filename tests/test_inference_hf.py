"""The transformers fallback engine on the tiny model: likelihood labels, constrained JSON/text, adapters."""

from __future__ import annotations

import asyncio

import jsonschema
import pytest
import torch

from domain_lm.inference import GenerationRequest, create_engine, render_prompt
from domain_lm.inference.schema_bounds import text_regex
from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks import TemplateRegistry

from .conftest import REPO

MSGS = [{"role": "user", "content": "Is this about credit cards or loans? The mortgage rate went up."}]


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from domain_lm.models.loading import load_causal_lm

    torch.manual_seed(1)
    model = get_peft_model(load_causal_lm(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir, lora_dir):
    eng = create_engine(tiny_model_dir, kind="hf", adapters={"demo": lora_dir}, max_batch_size=4)
    yield eng
    eng.close()


def _choice_logprob(model, tok, prompt: str, choice: str) -> float:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(choice, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0], -1)
    return float(sum(logp[len(p) - 1 + i, t] for i, t in enumerate(c)))


def test_label_is_the_most_likely_choice(engine, tiny_model_dir):
    from domain_lm.models.loading import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    choices = ["credit_card", "loan", "neither of them"]
    # two requests of different prompt lengths in one padded batch
    reqs = [GenerationRequest(messages=MSGS, choices=choices),
            GenerationRequest(messages=[{"role": "user", "content": "hi"}], choices=choices)]
    got = engine.generate_batch(reqs)
    for r, res in zip(reqs, got):
        prompt = render_prompt(tok, r)
        expected = max(choices, key=lambda c: _choice_logprob(model, tok, prompt, c))
        assert res.text == expected


def test_constrained_json_and_text(engine):
    schema = {
        "type": "object",
        "properties": {"value": {"type": "number", "minimum": -1e6, "maximum": 1e6}, "unit": {"type": "string", "maxLength": 12}},
        "required": ["value", "unit"],
        "additionalProperties": False,
    }
    js, txt, free = engine.generate_batch(
        [
            GenerationRequest(messages=MSGS, json_schema=schema, max_tokens=80),
            GenerationRequest(messages=MSGS, regex=text_regex(30), max_tokens=40),
            GenerationRequest(messages=MSGS, max_tokens=7),
        ]
    )
    import json

    jsonschema.validate(json.loads(js.text), schema)
    assert txt.text.strip() and len(txt.text) <= 30
    assert free.completion_tokens == 7 and free.finish_reason == "length"


def test_async_callers_are_batched_and_adapter_changes_output(engine):
    async def go():
        reqs = [GenerationRequest(messages=MSGS, max_tokens=12, adapter=a) for a in (None, "demo", None, "demo")]
        return await asyncio.gather(*(engine.generate(r) for r in reqs))

    base1, lora1, base2, lora2 = asyncio.run(go())
    assert base1.text == base2.text and lora1.text == lora2.text  # greedy: deterministic per adapter
    assert base1.text != lora1.text
    with pytest.raises(Exception, match="Unknown adapter"):
        asyncio.run(engine.generate(GenerationRequest(prompt="x", adapter="nope")))


def test_every_bundled_task_through_the_fallback(engine):
    reg = TemplateRegistry.load(REPO / "task_templates")
    runner = TaskRunner(engine)
    for t in reg:
        ex = next(x for x in t.examples if x.lang == "en")
        ans = runner.run(t, ex.inputs, lang="en")
        assert ans.output == t.output.locate(t.parse_output(ans.raw_text, "en", inputs=ex.inputs), ex.inputs)  # with offsets
