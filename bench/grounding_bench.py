"""Grounded decoding: what a per-request grammar costs, by input size, enum versus substring grammar.

For real inputs of about 50 / 500 / 3,000 / 6,000 characters (embedded FIN NER, KPI-EDGAR and
TAT-QA records joined until long enough; Chinese from BBT-FinCUGE FinNA when ``--shared-data``
holds it) it prints, per input:

* ``specialise``: time to build the per-request schema, whether it is enforced (else why not),
  candidates and their characters;
* ``enum``: xgrammar compile time of that schema (forced past the budget when it fell back, to show
  what the budget avoids);
* ``grammar``: compile time of the alternative, ``grounding.grounded_grammar``: xgrammar's JSON
  grammar for the schema where each grounded span accepts exactly the input's token-aligned
  substrings (a suffix automaton over tokens, one rule per state);
* gold coverage: the share of gold entities / evidence strings each approach can produce.

    PYTHONPATH=. python bench/grounding_bench.py [--tokenizer DIR] [--shared-data ../shared/data]

The tokenizer defaults to the imported SmolLM2 (49k tokens) when present, else the tiny test model.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from domain_lm.data import embedded
from domain_lm.inference.schema_bounds import bound_schema
from domain_lm.tasks.grounding import KEYWORD, TOKEN, Budget, grounded_grammar, span_candidates, specialise

REPO = Path(__file__).resolve().parents[1]
SIZES = (50, 500, 3000, 6000)
UNITS = ["USD", "USD thousand", "USD million", "USD billion", "thousand", "million", "billion", "%", "元", "万元", "亿元"]


def grounded_schemas() -> dict[str, dict[str, Any]]:
    """The bundled entities and extraction schemas with ``x-grounded`` added; extraction with its
    period grounded and its unit a closed list (a free bounded string costs seconds to compile)."""
    load = lambda name: yaml.safe_load((REPO / "task_templates" / f"{name}.yaml").read_text(encoding="utf-8"))["output"]["schema"]  # noqa: E731
    ent = load("entities")
    ent["items"]["properties"]["text"][KEYWORD] = {"input": "text", "kind": "span"}
    ext = load("extraction")
    props = ext["properties"]
    props["value"][KEYWORD] = {"input": "text", "kind": "number"}
    props["period"][KEYWORD] = {"input": "text", "kind": "span", "offsets": None}
    props["evidence"][KEYWORD] = {"input": "text", "kind": "span", "sentences": True, "offsets": ["evidence_start", "evidence_end"]}
    props["unit"]["anyOf"][0] = {"type": "string", "enum": UNITS}
    return {"entities": ent, "extraction": ext}


# --------------------------------------------------------------------------- inputs


def joined(texts: list[str], size: int) -> str:
    """Texts joined by newlines until ``size`` characters, cut at a space near the end if there is one."""
    out = ""
    for t in texts:
        if len(out) >= size:
            break
        out = f"{out}\n{t}" if out else t
    if len(out) > size:
        cut = out.rfind(" ", 0, size)
        out = out[: cut if cut > size - 40 else size]
    return out


def chinese_texts(shared: Path | None) -> list[str]:
    path = shared / "bbt_fincuge" / "finna" / "train.jsonl" if shared else None
    if path is None or not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(3000), f)]


def answer(record: dict[str, Any]) -> dict[str, Any]:
    a = record["answer"]
    return a if isinstance(a, dict) else ast.literal_eval(a)


# --------------------------------------------------------------------------- measuring


def make_compiler(tokenizer_dir: Path):
    import xgrammar as xgr

    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    info = xgr.TokenizerInfo.from_huggingface(tok, stop_token_ids=[tok.eos_token_id])
    return lambda: xgr.GrammarCompiler(info, cache_enabled=False), len(tok)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


def measure(name: str, schema: dict[str, Any], text: str, lang: str, compiler, inputs: dict[str, Any]) -> dict[str, Any]:
    bounded = bound_schema(schema)
    sp, spec_ms = timed(lambda: specialise(bounded, inputs, lang))
    forced = sp if sp.fully_enforced else specialise(bounded, inputs, lang, Budget(max_chars=10**9, max_candidates=10**9))
    _, enum_ms = timed(lambda: compiler().compile_json_schema(json.dumps(forced.schema_), any_whitespace=False))
    grammar, grammar_build_ms = timed(lambda: grounded_grammar(bounded, inputs, separators=(",", ":")))
    _, grammar_ms = timed(lambda: compiler().compile_grammar(grammar))
    why = next((f.reason for f in sp.fields if f.reason), "")
    return {
        "input": name,
        "chars": len(text),
        "enforced": sp.fully_enforced,
        "why_not": why.split(":")[-1].strip()[:60],
        "candidates": sum(f.candidates for f in forced.fields),
        "enum_chars": sum(f.chars for f in forced.fields),
        "specialise_ms": round(spec_ms, 1),
        "enum_compile_ms": round(enum_ms, 1),
        "grammar_rules": grammar.count("\n"),
        "grammar_build_ms": round(grammar_build_ms, 1),
        "grammar_compile_ms": round(grammar_ms, 1),
    }


def coverage() -> list[dict[str, Any]]:
    """Share of gold strings each approach can produce, on the whole embedded sets."""
    rows = []
    sets = [
        ("FIN NER entities", "fin_ner/entities", lambda r: [e["text"] for e in r["entities"]], 6, False),
        ("KPI-EDGAR evidence", "kpi_edgar/extraction", lambda r: [answer(r)["evidence"]] if answer(r)["evidence"] else [], 6, True),
        ("TAT-QA evidence", "tatqa/extraction", lambda r: [answer(r)["evidence"]] if answer(r)["evidence"] else [], 6, True),
        ("NLU++ evidence", "nlupp_banking/extraction", lambda r: [answer(r)["evidence"]] if answer(r)["evidence"] else [], 6, True),
    ]
    for label, ds, gold, words, sentences in sets:
        n = enum_ok = grammar_ok = 0
        for r in embedded.records(ds):
            cands = set(span_candidates(r["text"], words, sentences))
            for g in gold(r):
                n += 1
                enum_ok += g in cands
                grammar_ok += _aligned(g, r["text"])
        rows.append({"gold": label, "n": n, "enum": round(enum_ok / n, 3), "grammar": round(grammar_ok / n, 3)})
    return rows


def _aligned(span: str, text: str) -> bool:
    """``span`` is a trimmed token-aligned substring of ``text`` (what the substring grammar accepts)."""
    toks = [m for m in TOKEN.finditer(text) if not m.group().isspace()]
    starts, ends = {m.start() for m in toks}, {m.end() for m in toks}
    pos = text.find(span)
    while pos >= 0:
        if span and pos in starts and pos + len(span) in ends:
            return True
        pos = text.find(span, pos + 1)
    return False


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", type=Path, default=None, help="tokenizer directory (default: imported SmolLM2, else the tiny model)")
    ap.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--lang", choices=["en", "zh"], default=None, help="only inputs of this language")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    tok_dir = args.tokenizer
    if tok_dir is None:
        from domain_lm.models.registry import home

        tok_dir = home() / "models" / "smollm2-135m"
        if not (tok_dir / "tokenizer.json").is_file():
            from domain_lm.testing import build_tiny_model

            tok_dir = build_tiny_model(Path(tempfile.mkdtemp()))
    compiler, vocab = make_compiler(tok_dir)
    print(f"tokenizer {tok_dir} ({vocab} tokens)\n")
    schemas = grounded_schemas()
    sources = [
        ("FIN NER", "entities", "en", [r["text"] for r in embedded.records("fin_ner/entities")]),
        ("KPI-EDGAR", "extraction", "en", [r["text"] for r in embedded.records("kpi_edgar/extraction")]),
        ("TAT-QA", "extraction", "en", list(dict.fromkeys(r["text"] for r in embedded.records("tatqa/extraction")))),
    ]
    zh = chinese_texts(args.shared_data)
    if zh:
        sources += [("FinNA zh", "entities", "zh", zh), ("FinNA zh", "extraction", "zh", zh)]
    rows = []
    for label, task, lang, texts in [s for s in sources if args.lang in (None, s[2])]:
        for size in SIZES:
            text = joined(texts, size)
            inputs = {"text": text, "field": "revenue"}
            rows.append({"task": task, **measure(f"{label} {size}", schemas[task], text, lang, compiler, inputs)})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + table(rows))
    cov = coverage() if args.lang in (None, "en") else []
    if cov:
        print("\n" + table(cov))
    typical = [r["enum_compile_ms"] for r in rows if r["enforced"]]
    if typical:
        print(f"\nenforced requests: enum compile median {statistics.median(typical):.0f} ms, max {max(typical):.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"tokenizer": str(tok_dir), "rows": rows, "coverage": cov}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
