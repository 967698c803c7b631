"""Grounded answers (``domain_lm.tasks.grounding``): candidates, per-request schemas, verification,
offsets, on hand-made and real (embedded FIN NER / KPI-EDGAR / TAT-QA) texts, then on the real
transformers and vLLM engines with the tiny model (random weights: nonsense answers, but grounded)."""

from __future__ import annotations

import ast
import copy
import itertools
import json
import re
import time

import jsonschema
import pytest
import yaml

from domain_lm.data import embedded
from domain_lm.inference.schema_bounds import bound_schema
from domain_lm.tasks.grounding import (
    KEYWORD,
    Budget,
    GroundingError,
    UngroundedError,
    covering_candidate,
    grounded_fields,
    grounded_grammar,
    grounding_counts,
    locate,
    located_schema,
    number_candidates,
    number_occurs,
    require_grounded,
    span_candidates,
    specialise,
    strip,
    ungrounded,
)

from .conftest import REPO, has_module, requires_vllm

SPAN = {"input": "text", "kind": "span"}
NUMBER = {"input": "text", "kind": "number"}
EVIDENCE = {"input": "text", "kind": "span", "sentences": True, "offsets": ["evidence_start", "evidence_end"]}


def _template_schema(name: str) -> dict:
    return yaml.safe_load((REPO / "task_templates" / f"{name}.yaml").read_text(encoding="utf-8"))["output"]["schema"]


def entities_schema() -> dict:
    """The bundled entities schema (its entity text is grounded)."""
    schema = _template_schema("entities")
    assert schema["items"]["properties"]["text"][KEYWORD] == SPAN
    return schema


def extraction_schema(free_unit: bool = False) -> dict:
    """The bundled extraction schema (evidence, value and period grounded, unit a closed list); with
    ``free_unit``, the unit a free bounded string (slow to compile per request: verification only)."""
    schema = _template_schema("extraction")
    props = schema["properties"]
    assert (props["value"][KEYWORD], props["evidence"][KEYWORD]) == (NUMBER, EVIDENCE)
    assert props["period"][KEYWORD] == dict(SPAN, max_words=6, offsets=None, overflow="shortest")
    if free_unit:
        props["unit"]["anyOf"][0] = {"type": "string", "maxLength": 40}
    return schema


UNITS = _template_schema("extraction")["properties"]["unit"]["anyOf"][0]["enum"]


EN = ("Northbridge Capital said on Tuesday that Maria Lopez will lead its new office in Singapore. "
      "Northbridge Capital's revenue was $1,496.5 million.")
ZH = "华信银行董事长王建国表示，公司将在深圳设立新的科技子公司。报告期内，公司2022年实现主营业务收入85.6亿元，同比增长7.3%。"


def _enum_at(schema: dict, *path: str):
    node = schema
    for key in path:
        node = node[key]
    return node["enum"]


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Rent and other deposits | 6,106 | 5,687", [6106, 5687]),
        ("Total sales | $1,496.5 | $  1,202.9", [1496.5, 1202.9]),
        ("Net interest margin narrowed to 1.85% in the first half", [1.85]),
        ("公司２０２２年实现收入８５．６亿元", [2022, 85.6]),
        ("which resulted in a $902 million loss", [902]),
        ("Other operating expenses | 27.0 | 33.7", [27.0, 33.7]),
        ("for 2019-2020 the loss was -3.2 and −4", [2019, 2020, -3.2, -4]),
        ("Net loss | (1,234) | 56", [1234, -1234, 56]),
        ("no figures here", []),
    ],
)
def test_number_candidates_normalise_the_usual_notations(text, expected):
    got = number_candidates(text)
    assert got == expected
    # an integer numeral stays an int and a decimal one a float, so the literal is the input's
    assert [type(v) for v in got] == [type(v) for v in expected]


def test_a_scale_word_is_not_part_of_the_number():
    assert number_occurs(902, "a $902 million loss")
    assert not number_occurs(902_000_000, "a $902 million loss")
    assert number_occurs(27, "expenses | 27.0 |")  # the same value, whatever the literal
    assert not number_occurs(5, "5,687")  # a thousands group is not a number of its own


@pytest.mark.parametrize("dataset", ["kpi_edgar/extraction", "tatqa/extraction", "nlupp_banking/extraction"])
def test_every_gold_value_of_the_real_extraction_data_occurs_in_its_text(dataset):
    values = [(_answer(r)["value"], r["text"]) for r in embedded.records(dataset)]
    values = [(v, t) for v, t in values if v is not None]
    assert len(values) > 50
    missing = [(v, t[:80]) for v, t in values if not number_occurs(v, t)]
    assert missing == []


def _answer(record: dict) -> dict:
    a = record["answer"]
    return a if isinstance(a, dict) else ast.literal_eval(a)


# --------------------------------------------------------------------------- spans


def test_span_candidates_are_trimmed_token_aligned_substrings():
    cands = list(span_candidates(EN, 6))
    assert {"Northbridge Capital", "Maria Lopez", "Singapore", "$1,496.5", "1,496.5 million"} <= set(cands)
    assert "Northbridge" in cands  # a span of the possessive "Northbridge Capital's"
    assert all(c in EN and c == c.strip() for c in cands)
    assert len(cands) == len(set(cands))
    assert "Bridge" not in cands and "ortheast" not in " ".join(cands)  # whole words only
    assert not any("Singapore. Northbridge" in c for c in cands)  # n-grams stay inside a sentence
    assert max(len(c.split()) for c in cands) <= 6


def test_initials_and_abbreviations_do_not_end_a_sentence():
    cands = set(span_candidates("The CFO, Sidney X. Huang, joined Acme Inc. in 2019.", 5))
    assert {"Sidney X. Huang", "Acme Inc. in 2019"} <= cands


def test_table_cells_and_lines_bound_ngrams_and_sentences_mode_adds_whole_lines():
    text = "| 2019 | 2018\nTotal sales | $1,496.5 | $1,202.9\nOther | 44.1 | 56.7"
    short = set(span_candidates(text, 3))
    assert "Total sales" in short and "$1,496.5" in short
    assert not any("|" in c or "\n" in c for c in short)
    full = set(span_candidates(text, 3, sentences=True))
    assert "Total sales | $1,496.5 | $1,202.9" in full


def test_chinese_spans_are_character_ngrams_within_clauses():
    cands = set(span_candidates(ZH, 12))
    assert {"华信银行", "王建国", "深圳", "主营业务收入", "85.6亿元"} <= cands
    assert not any("，" in c or "。" in c for c in cands)  # clause marks bound n-grams
    evidence = set(span_candidates(ZH, 12, sentences=True))
    assert "公司2022年实现主营业务收入85.6亿元" in evidence  # a whole clause


def test_candidate_generation_is_lazy_and_cheap_on_a_long_input():
    text = " ".join(r["text"] for r in embedded.records("kpi_edgar/extraction")[:60])[:6000]
    t0 = time.perf_counter()
    first = list(itertools.islice(span_candidates(text, 6, sentences=True), 100))
    assert len(first) == 100
    assert time.perf_counter() - t0 < 0.5


def test_gold_entities_of_real_fin_ner_sentences_are_candidates():
    records = embedded.records("fin_ner/entities")
    gold = [(e["text"], r["text"]) for r in records for e in r["entities"]]
    covered = sum(g in set(span_candidates(t, 6)) for g, t in gold)
    assert len(gold) > 500 and covered / len(gold) >= 0.99


def test_gold_evidence_of_real_tatqa_tables_is_a_candidate():
    records = embedded.records("tatqa/extraction")
    pairs = [(_answer(r)["evidence"], r["text"]) for r in records if _answer(r)["evidence"]]
    assert all(ev in set(span_candidates(t, 6, sentences=True)) for ev, t in pairs)


def test_covering_candidate_snaps_real_kpi_evidence_to_an_offered_span():
    records = [r for r in embedded.records("kpi_edgar/extraction") if _answer(r)["evidence"]][:200]
    snapped = 0
    for r in records:
        evidence, text = _answer(r)["evidence"], r["text"]
        cover = covering_candidate(evidence, text, 6)
        assert cover is not None and evidence in cover and cover in set(span_candidates(text, 6, sentences=True))
        snapped += cover != evidence
    assert snapped > len(records) // 2  # most KPI-EDGAR evidence is cut mid-clause
    assert covering_candidate("Maria Lopez", EN, 6) == "Maria Lopez"
    assert covering_candidate("Goldman", EN, 6) is None


# --------------------------------------------------------------------------- the keyword


def test_grounded_fields_lists_paths_in_schema_order():
    fields = grounded_fields(extraction_schema())
    assert [(f.path, f.grounding.kind) for f in fields] == [("$.evidence", "span"), ("$.value", "number"), ("$.period", "span")]
    assert grounded_fields(entities_schema(), input_names={"text"})[0].path == "$[*].text"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["items"]["properties"]["text"].update({KEYWORD: {"input": "text", "kind": "substring"}}), "kind"),
        (lambda s: s["items"]["properties"]["text"].update({KEYWORD: {"kind": "span"}}), "input"),
        (lambda s: s["items"]["properties"]["text"].update({KEYWORD: dict(SPAN, colour=1)}), "colour"),
        (lambda s: s["items"]["properties"]["type"].update({KEYWORD: NUMBER}), "needs a node of type"),
        (lambda s: s.update({"$defs": {"x": {"type": "string", KEYWORD: SPAN}}}), "$defs"),
        (lambda s: s["items"]["properties"].update({"alias": {"type": "string", KEYWORD: SPAN}}), "offset key"),
        (lambda s: s["items"]["properties"]["text"].update({KEYWORD: dict(SPAN, input="body")}), "does not declare"),
    ],
)
def test_a_bad_keyword_is_a_clear_error(mutate, message):
    schema = entities_schema()
    mutate(schema)
    with pytest.raises(GroundingError, match=re.escape(message)):
        grounded_fields(schema, input_names={"text"})


def test_the_schema_with_the_keyword_stays_valid_json_schema():
    for schema in (entities_schema(), extraction_schema()):
        jsonschema.Draft202012Validator.check_schema(schema)
        assert KEYWORD not in json.dumps(strip(schema))


# --------------------------------------------------------------------------- specialise


def test_specialised_entities_schema_offers_only_spans_of_the_input():
    sp = specialise(bound_schema(entities_schema()), {"text": EN})
    assert sp.fully_enforced and [(f.path, f.enforced) for f in sp.fields] == [("$[*].text", True)]
    enum = _enum_at(sp.schema_, "items", "properties", "text")
    assert sp.fields[0].candidates == len(enum) > 20
    assert all(c in EN for c in enum)
    assert _enum_at(sp.schema_, "items", "properties", "type") == ["ORG", "PER", "LOC"]  # untouched
    assert KEYWORD not in json.dumps(sp.schema_)
    jsonschema.Draft202012Validator.check_schema(sp.schema_)
    gold = [{"text": "Northbridge Capital", "type": "ORG"}, {"text": "Maria Lopez", "type": "PER"}, {"text": "Singapore", "type": "LOC"}]
    jsonschema.validate(gold, sp.schema_)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"text": "Goldman Sachs", "type": "ORG"}], sp.schema_)


def test_specialised_extraction_schema_enumerates_numbers_and_evidence():
    inputs = {"text": ZH, "field": "主营业务收入", "period": "2022年"}
    sp = specialise(bound_schema(extraction_schema()), inputs, lang="zh")
    assert sp.fully_enforced
    props = sp.schema_["properties"]
    number, null = props["value"]["anyOf"]
    assert _admitted_numbers(number) == [2022, 85.6, 7.3]
    assert null == {"type": "null"}  # "not stated" stays possible
    evidence = props["evidence"]["anyOf"][0]["enum"]
    assert "公司2022年实现主营业务收入85.6亿元" in evidence and all(e in ZH and len(e) <= 500 for e in evidence)
    jsonschema.validate({"value": 85.6, "unit": "亿元", "period": "2022年", "evidence": "公司2022年实现主营业务收入85.6亿元"}, sp.schema_)
    jsonschema.validate({"value": None, "unit": None, "period": None, "evidence": None}, sp.schema_)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"value": 86.5, "unit": "亿元", "period": None, "evidence": None}, sp.schema_)


def _admitted_numbers(node: dict) -> list:
    """The numbers a specialised number node admits (an enum of exact literals, and min == max ranges)."""
    if "enum" in node:
        return node["enum"]
    out = []
    for branch in node["anyOf"]:
        out += branch["enum"] if "enum" in branch else [branch["minimum"]] * (branch["minimum"] == branch["maximum"])
    return out


def test_number_candidates_respect_the_node_bounds():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 100, KEYWORD: NUMBER}}, "required": ["n"]}
    sp = specialise(schema, {"text": "from -5 to 7.5, then 42 and 2019"})
    assert sp.schema_["properties"]["n"] == {"enum": [42]}


def test_a_free_bounded_string_keeps_the_cached_template_schema():
    schema = bound_schema(extraction_schema(free_unit=True))
    sp = specialise(schema, {"text": EN, "field": "revenue"})
    assert not sp.fully_enforced and sp.schema_ == strip(schema)
    assert all("$.unit" in f.reason for f in sp.fields)


def test_over_budget_falls_back_to_verification_with_a_reason_in_bounded_time():
    text = " ".join(r["text"] for r in embedded.records("fin_ner/entities"))[:6000]
    schema = bound_schema(entities_schema())
    t0 = time.perf_counter()
    sp = specialise(schema, {"text": text})
    assert time.perf_counter() - t0 < 1.0
    assert not sp.fully_enforced and "budget" in sp.fields[0].reason
    assert sp.schema_ == strip(schema)  # the same for every long input: the engine compiles it once
    small = specialise(schema, {"text": EN}, budget=Budget(max_chars=50))
    assert not small.fully_enforced and "characters" in small.fields[0].reason


def test_a_short_field_over_budget_keeps_its_shortest_candidates():
    """A TAT-QA table with its paragraph holds more 6-word spans than the budget: the period (``overflow:
    shortest``) is offered its shortest spans, which hold the years, and stays enforced, so the evidence
    is enforced too; without it the whole answer fell back to verification (the 1 ungrounded answer of
    the extraction bench's 60)."""
    years = " ".join(f"In {y} net income was {y * 3 - 5000} million and fees rose {y % 7} percent." for y in range(1990, 2010))
    text = "Revenue | 2019: 1,452.4 | 2018: 1,146.2\n" + years
    schema = bound_schema(extraction_schema())
    sp = specialise(schema, {"text": text, "field": "revenue"})
    evidence, value, period = (next(f for f in sp.fields if f.path == f"$.{k}") for k in ("evidence", "value", "period"))
    assert sp.fully_enforced and period.cut and not evidence.cut and not value.cut
    offered = sp.schema_["properties"]["period"]["anyOf"][0]["enum"]
    unbounded = specialise(schema, {"text": text, "field": "revenue"}, budget=Budget(max_chars=10**6, max_candidates=10**5))
    everything = unbounded.schema_["properties"]["period"]["anyOf"][0]["enum"]
    assert {"2019", "1990", "2009"} <= set(offered) and set(offered) < set(everything)
    assert max(len(c.split()) for c in offered) < max(len(c.split()) for c in everything)  # the longest spans go
    verify = copy.deepcopy(schema)
    del verify["properties"]["period"][KEYWORD]["overflow"]
    fallback = specialise(verify, {"text": text, "field": "revenue"})
    assert not fallback.fully_enforced and "$.period" in fallback.fields[0].reason


def test_no_candidate_leaves_only_the_other_alternatives():
    ents = specialise(entities_schema(), {"text": "... !!!"})
    assert ents.fully_enforced and ents.schema_["maxItems"] == 0
    jsonschema.validate([], ents.schema_)
    ext = specialise(extraction_schema(), {"text": "no figures here", "field": "revenue"})
    assert ext.schema_["properties"]["value"]["anyOf"] == [{"type": "null"}]
    bare = {"type": "object", "properties": {"q": {"type": "string", KEYWORD: SPAN}}, "required": ["q"]}
    sp = specialise(bare, {"text": "   "})
    assert not sp.fully_enforced and "no candidate" in sp.fields[0].reason and sp.schema_ == strip(bare)


def test_a_type_list_with_null_keeps_null():
    props = {"s": {"type": ["string", "null"], KEYWORD: SPAN}, "n": {"type": ["number", "null"], KEYWORD: NUMBER}}
    schema = {"type": "object", "properties": props}
    sp = specialise(schema, {"text": "Rates rose 0.25 points"})
    assert sp.schema_["properties"]["s"]["enum"][-1] is None and "Rates rose" in sp.schema_["properties"]["s"]["enum"]
    jsonschema.validate({"s": None, "n": None}, sp.schema_)
    jsonschema.validate({"s": "rose", "n": 0.25}, sp.schema_)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"n": 0.5}, sp.schema_)


@pytest.mark.parametrize(("inputs", "message"), [({}, "does not give"), ({"text": 42}, "int, not text")])
def test_a_missing_or_non_text_input_is_a_clear_error(inputs, message):
    with pytest.raises(GroundingError, match=message):
        specialise(entities_schema(), inputs)


@pytest.mark.skipif(not has_module("xgrammar"), reason="xgrammar not installed")
def test_xgrammar_accepts_grounded_answers_and_rejects_others(tiny_model_dir):
    import xgrammar as xgr

    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, stop_token_ids=[tok.eos_token_id]))
    sp = specialise(bound_schema(entities_schema(), max_items=4), {"text": EN})
    grammar = compiler.compile_json_schema(json.dumps(sp.schema_), any_whitespace=False)

    def accepts(answer: str) -> bool:
        matcher = xgr.GrammarMatcher(grammar)
        return matcher.accept_string(answer) and matcher.accept_token(tok.eos_token_id)

    assert accepts('[{"text": "Maria Lopez", "type": "PER"}]')
    assert not accepts('[{"text": "Maria Lopes", "type": "PER"}]')
    assert not accepts('[{"text": "Maria", "type": "PER"}, {"text": "Lopez will lead its new office in Singapore", "type": "LOC"}]')
    # Numbers keep the input's literal: 85.6, not the 17-digit "85.599999999999994" of a float enum.
    sp = specialise(extraction_schema(), {"text": ZH, "field": "收入"}, lang="zh")
    grammar = compiler.compile_json_schema(json.dumps(sp.schema_), any_whitespace=False)
    answer = '{"evidence": "85.6亿元", "value": %s, "unit": "亿元", "period": "2022年"}'
    assert accepts(answer % "85.6") and accepts(answer % "2022") and accepts(answer % "null")
    assert not accepts(answer % "85.599999999999994") and not accepts(answer % "85.5") and not accepts(answer % "2021")


# --------------------------------------------------------------------------- the grammar alternative


@pytest.fixture(scope="module")
def tiny_compiler(tiny_model_dir):
    xgr = pytest.importorskip("xgrammar")
    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    return tok, xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, stop_token_ids=[tok.eos_token_id]))


def _acceptor(tok, compiled):
    import xgrammar as xgr

    def accepts(answer: str) -> bool:
        matcher = xgr.GrammarMatcher(compiled)
        return matcher.accept_string(answer) and matcher.accept_token(tok.eos_token_id)

    return accepts


def test_grounded_grammar_accepts_every_token_aligned_span_and_nothing_else(tiny_compiler):
    tok, compiler = tiny_compiler
    text = 'Total sales | $1,496.5 | $1,202.9\nThe "core" unit of Acme Inc. grew 9% in the year; 公司收入85.6亿元，同比增长7.3%。'
    ebnf = grounded_grammar(extraction_schema(), {"text": text, "field": "sales"})
    accepts = _acceptor(tok, compiler.compile_grammar(ebnf))
    answer = '{"evidence":%s,"value":%s,"unit":null,"period":null}'
    for span in ["Total sales | $1,496.5 | $1,202.9\nThe \"core\" unit of Acme Inc. grew 9% in the year", "$1,202.9",
                 "公司收入85.6亿元，同比增长7.3%", "Acme Inc."]:
        assert accepts(answer % (json.dumps(span, ensure_ascii=False), "1496.5")), span
    assert accepts(answer % ("null", "null")) and accepts(answer % ('"9%"', "85.6"))
    for span in ["Total sales $1,496.5", "otal sales", " Total", "sales ", "| $1,496.5", "Acme Inc. grew 10%", ""]:
        assert not accepts(answer % (json.dumps(span, ensure_ascii=False), "null")), span
    assert not accepts(answer % ("null", "1496.6"))


def test_grounded_grammar_gives_way_to_verification_when_too_costly():
    assert grounded_grammar(extraction_schema(free_unit=True), {"text": EN}) is None  # a free bounded string
    assert grounded_grammar(entities_schema(), {"text": EN}, max_input_tokens=10) is None
    assert grounded_grammar(entities_schema(), {"text": EN}) is not None


@pytest.mark.skipif(not has_module("xgrammar"), reason="xgrammar not installed")
def test_tiny_model_decodes_grounded_entities_under_the_grammar(tiny_model_dir, tiny_compiler):
    import torch
    import xgrammar as xgr

    from domain_lm.inference import GenerationRequest, encode_prompt
    from domain_lm.models.loading import load_causal_lm

    tok, compiler = tiny_compiler
    model = load_causal_lm(tiny_model_dir)
    schema = bound_schema(entities_schema(), max_items=3)
    schema["minItems"] = 1
    for text, seed in itertools.product((EN, ZH), (0, 1)):
        compiled = compiler.compile_grammar(grounded_grammar(schema, {"text": text}, separators=(", ", ": ")))
        prompt = encode_prompt(tok, GenerationRequest(messages=[{"role": "user", "content": f"Entities in: {text}"}]))
        torch.manual_seed(seed)
        processor = xgr.contrib.hf.LogitsProcessor(compiled)
        out = model.generate(torch.tensor([prompt]), do_sample=True, max_new_tokens=400, logits_processor=[processor],
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        answer = tok.decode(out[0, len(prompt) :], skip_special_tokens=True)
        value = json.loads(answer)
        assert value and ungrounded(value, schema, {"text": text}) == [], answer
        assert all(text[e["start"] : e["end"]] == e["text"] for e in locate(value, schema, {"text": text}))


# --------------------------------------------------------------------------- verification and offsets


def test_ungrounded_names_the_paths_of_values_not_in_the_input():
    answer = [{"text": "Maria Lopez", "type": "PER"}, {"text": "Goldman Sachs", "type": "ORG"}, {"text": "", "type": "LOC"}]
    assert ungrounded(answer, entities_schema(), {"text": EN}) == ["$[1].text", "$[2].text"]
    ext = {"value": 1496.5, "unit": "USD million", "period": "Tuesday", "evidence": "revenue was $1,496.5 million"}
    assert ungrounded(ext, extraction_schema(), {"text": EN}) == []
    ext_bad = dict(ext, value=1496.6, period="2023", evidence=None)
    assert ungrounded(ext_bad, extraction_schema(), {"text": EN}) == ["$.value", "$.period"]
    assert ungrounded(ext, extraction_schema(), {}) == ["$.evidence", "$.value", "$.period"]
    require_grounded(ext, extraction_schema(), {"text": EN}, raw="{}")
    with pytest.raises(UngroundedError, match=re.escape("$.value, $.period")) as err:
        require_grounded(ext_bad, extraction_schema(), {"text": EN}, raw=json.dumps(ext_bad), task="extraction")
    assert err.value.paths == ["$.value", "$.period"] and err.value.raw == json.dumps(ext_bad) and err.value.task == "extraction"


def test_grounding_counts_for_an_eval_report():
    schema = entities_schema()
    answers = [
        ([{"text": "Maria Lopez", "type": "PER"}], {"text": EN}),
        ([{"text": "Maria Lopez", "type": "PER"}, {"text": "Goldman Sachs", "type": "ORG"}, {"text": "JPM", "type": "ORG"}], {"text": EN}),
        (None, {"text": EN}),
        ([], {"text": EN}),
    ]
    assert grounding_counts(schema, answers) == {
        "answers": 4, "invalid": 1, "ungrounded_answers": 1, "grounded_values": 2, "ungrounded_values": 2,
    }


def test_locate_gives_each_mention_its_own_occurrence_in_order():
    text = "Bank A lent to Borrower. Borrower repaid Bank A. Borrower's auditor, KPMG, agreed."
    answer = [{"text": "Bank A", "type": "ORG"}, {"text": "Borrower", "type": "ORG"}, {"text": "Borrower", "type": "ORG"},
              {"text": "Bank A", "type": "ORG"}, {"text": "Borrower", "type": "ORG"}, {"text": "Borrower", "type": "ORG"},
              {"text": "Deloitte", "type": "ORG"}]
    before = copy.deepcopy(answer)
    located = locate(answer, entities_schema(), {"text": text})
    assert answer == before  # a copy: the parsed answer is not changed
    starts = [e.get("start") for e in located]
    assert starts == [0, 15, 25, 41, 49, 49, None]  # the 4th Borrower reuses the last occurrence
    for e in located[:-1]:
        assert text[e["start"] : e["end"]] == e["text"]
    jsonschema.validate(located[:-1], located_schema(entities_schema()))


def test_locate_uses_the_declared_offset_keys_and_real_kpi_offsets():
    record = next(r for r in embedded.records("kpi_edgar/extraction") if _answer(r)["evidence"])
    gold = _answer(record)
    located = locate(gold, extraction_schema(), {"text": record["text"]})
    assert located["evidence_start"] == int(record["evidence_start"])
    assert located["evidence_end"] == located["evidence_start"] + len(gold["evidence"])
    assert "start" not in located  # period has offsets: null
    jsonschema.validate(located, located_schema(extraction_schema()))


# --------------------------------------------------------------------------- real engines, tiny model

ENGINE_CASES = [
    ("entities", "en", {"text": EN}),
    ("entities", "zh", {"text": ZH}),
    ("extraction", "en", {"text": embedded.records("kpi_edgar/extraction")[0]["text"], "field": "loss", "period": "2020"}),
    ("extraction", "zh", {"text": ZH, "field": "主营业务收入", "period": "2022年"}),
]


def _must_answer(task: str) -> dict:
    """The task's grounded schema where the answer cannot dodge: at least one entity, no nulls for
    the grounded value and evidence (so a random model has to write grounded text)."""
    if task == "entities":
        schema = bound_schema(entities_schema())
        schema["minItems"], schema["maxItems"] = 1, 3
        return schema
    schema = bound_schema(extraction_schema())
    for key in ("value", "evidence"):
        node = schema["properties"][key]
        schema["properties"][key] = {**node["anyOf"][0], KEYWORD: node[KEYWORD]}
    return schema


def _grounded_requests():
    from domain_lm.inference import GenerationRequest
    from domain_lm.inference.schema_bounds import worst_case_chars
    from domain_lm.tasks import TemplateRegistry

    registry = TemplateRegistry.load(REPO / "task_templates")
    cases = []
    for (task, lang, inputs), seed in itertools.product(ENGINE_CASES, (0, 1, 2)):
        template = registry.get(task)
        grounded = _must_answer(task)
        sp = specialise(grounded, inputs, lang)
        assert sp.fully_enforced, sp.fields
        # Room for the longest answer at one token per UTF-8 byte: the JSON always closes.
        budget = 3 * worst_case_chars(sp.schema_) + 16
        messages = template.render_messages(template.validate_inputs(inputs), lang=lang)
        request = GenerationRequest(messages=messages, json_schema=sp.schema_, max_tokens=budget, temperature=1.0, seed=seed)
        cases.append((grounded, inputs, request))
    return cases


def _assert_grounded_answers(engine) -> None:
    cases = _grounded_requests()
    results = engine.generate_batch([request for _, _, request in cases])
    spans = 0
    for (grounded, inputs, request), result in zip(cases, results):
        assert result.finish_reason == "stop", result
        value = json.loads(result.text)
        jsonschema.validate(value, request.json_schema)
        # a copied figure is written as the input writes it, not as a 17-digit float
        assert all(len(d) <= 6 for d in re.findall(r'"value": ?-?\d+\.(\d+)', result.text)), result.text
        assert ungrounded(value, grounded, inputs) == [], result.text
        located = locate(value, grounded, inputs)
        for obj in located if isinstance(located, list) else [located]:
            for start, end, key in (("start", "end", "text"), ("evidence_start", "evidence_end", "evidence")):
                if key in obj and start in obj:
                    assert inputs["text"][obj[start] : obj[end]] == obj[key]
                    spans += 1
    assert spans >= len(cases)  # every answer carried at least one located span


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):
    from domain_lm.inference import create_engine

    engine = create_engine(tiny_model_dir, kind="hf", max_batch_size=6)
    yield engine
    engine.close()


@pytest.mark.skipif(not has_module("xgrammar"), reason="xgrammar not installed")
def test_hf_engine_answers_are_grounded(hf_engine):
    _assert_grounded_answers(hf_engine)


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    from domain_lm.inference import create_engine

    engine = create_engine(tiny_model_dir, kind="vllm", model_name="tiny", gpu_memory_utilization=0.05, max_model_len=2048)
    yield engine
    engine.close()


@pytest.mark.vllm
@requires_vllm
def test_vllm_engine_answers_are_grounded(vllm_engine):
    _assert_grounded_answers(vllm_engine)
