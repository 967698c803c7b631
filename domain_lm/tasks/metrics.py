"""Scoring functions for the bank tasks: pure functions over gold and predicted values.

A prediction of ``None`` means the model broke the output contract (invalid output). Every metric
counts it as wrong instead of dropping it, so a model that answers badly cannot look better by
answering less.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Iterable, Sequence

INVALID = "__invalid__"

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"[-+]?\(?\$?\d[\d,]*(?:\.\d+)?\)?%?|[-+]?\.\d+%?")


# --------------------------------------------------------------------------- classification


def classification_scores(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro and weighted F1, and per-class F1.

    ``labels`` fixes the classes the F1 averages run over (default: the gold labels seen). An
    invalid prediction (``None``) is a miss for its gold class and a false positive for nobody.
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} items but pred has {len(pred)}")
    if not gold:
        return {"n": 0, "accuracy": 0.0, "macro_f1": 0.0, "weighted_f1": 0.0, "invalid": 0, "per_class_f1": {}}
    labels = list(labels) if labels else sorted(set(gold))
    p = [INVALID if x is None else x for x in pred]
    g = list(gold)
    macro = f1_score(g, p, labels=labels, average="macro", zero_division=0)
    weighted = f1_score(g, p, labels=labels, average="weighted", zero_division=0)
    _, _, per, _ = precision_recall_fscore_support(g, p, labels=labels, zero_division=0)
    return {
        "n": len(g),
        "accuracy": sum(a == b for a, b in zip(g, p)) / len(g),
        "macro_f1": float(macro),
        "weighted_f1": float(weighted),
        "invalid": sum(x is None for x in pred),
        "per_class_f1": {lab: float(v) for lab, v in zip(labels, per)},
    }


# --------------------------------------------------------------------------- entities


def _entity_key(ent: Any) -> tuple[str, str]:
    """(type, normalised text) of an entity given as a dict or a (text, type) pair."""
    if isinstance(ent, dict):
        text, typ = ent.get("text", ""), ent.get("type", ent.get("label", ""))
    else:
        text, typ = ent
    return str(typ).strip().upper(), " ".join(str(text).split()).lower()


def entity_scores(gold: Sequence[Iterable[Any]], pred: Sequence[Iterable[Any] | None]) -> dict[str, Any]:
    """Micro precision/recall/F1 over entities matched by (type, text), as multisets per example.

    Entity-level (CoNLL-style) scoring: an entity counts only when both its span text and type are
    right. An invalid prediction contributes zero predicted entities, so its gold entities are misses.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} items but pred has {len(pred)}")
    tp = n_gold = n_pred = 0
    per_type: dict[str, Counter] = {}
    for g, p in zip(gold, pred):
        gc = Counter(_entity_key(e) for e in g)
        pc = Counter(_entity_key(e) for e in (p or []))
        hit = gc & pc
        tp += sum(hit.values())
        n_gold += sum(gc.values())
        n_pred += sum(pc.values())
        for (typ, _), c in gc.items():
            per_type.setdefault(typ, Counter())["gold"] += c
        for (typ, _), c in pc.items():
            per_type.setdefault(typ, Counter())["pred"] += c
        for (typ, _), c in hit.items():
            per_type[typ]["tp"] += c
    prec, rec, f1 = _prf(tp, n_pred, n_gold)
    by_type = {t: dict(zip(("precision", "recall", "f1"), _prf(c["tp"], c["pred"], c["gold"]))) for t, c in sorted(per_type.items())}
    return {
        "n": len(gold),
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "invalid": sum(p is None for p in pred),
        "per_type": by_type,
    }


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_gold if n_gold else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1


# --------------------------------------------------------------------------- extraction / QA


def normalize_text(s: Any) -> str:
    """Lower-case, drop punctuation and articles, squeeze spaces (SQuAD-style normalisation)."""
    s = str(s).lower()
    s = re.sub(r"[^\w\s.%-]", " ", s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split()).strip(" .")


def parse_number(x: Any) -> float | None:
    """The first number in ``x`` (handles 1,234.5 / $12 / (3.4) as negative / 12%); None if none."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x) if math.isfinite(x) else None
    m = _NUMBER.search(str(x))
    if not m:
        return None
    tok = m.group(0)
    neg = tok.startswith("-") or (tok.startswith("(") and tok.endswith(")"))
    digits = re.sub(r"[^\d.]", "", tok)
    try:
        v = float(digits)
    except ValueError:
        return None
    return -v if neg else v


def numeric_match(gold: Any, pred: Any, rel_tol: float = 0.01, abs_tol: float = 1e-6) -> bool:
    """True when both parse as numbers within ``rel_tol`` (relative) or ``abs_tol`` of each other."""
    g, p = parse_number(gold), parse_number(pred)
    if g is None or p is None:
        return False
    return math.isclose(g, p, rel_tol=rel_tol, abs_tol=abs_tol)


def exact_match(gold: Any, pred: Any) -> bool:
    return pred is not None and normalize_text(gold) == normalize_text(pred)


def _field_match(g: Any, p: Any, rel_tol: float) -> bool:
    if (isinstance(g, (int, float)) and not isinstance(g, bool)) or _is_numeric_string(g):
        return numeric_match(g, p, rel_tol=rel_tol)
    if isinstance(g, list):
        return isinstance(p, list) and sorted(map(normalize_text, g)) == sorted(map(normalize_text, p))
    if g is None:
        return p in (None, "", [])
    return exact_match(g, p)


#: Fields of an extraction answer that support it rather than answer it (see ``extraction_scores``).
PROVENANCE = ("evidence",)


def _token_f1(gold: str, pred: str) -> float:
    g, p = normalize_text(gold).split(), normalize_text(pred).split()
    common = sum((Counter(g) & Counter(p)).values())
    return 0.0 if not common else 2 * common / (len(g) + len(p))


def extraction_scores(gold: Sequence[Any], pred: Sequence[Any | None], rel_tol: float = 0.01) -> dict[str, Any]:
    """Exact match and numeric match for extraction / table QA.

    Values may be scalars or JSON objects. For objects, a field matches when strings are equal after
    normalisation and numbers are within ``rel_tol``; ``exact_match`` needs every gold *answer* field
    right: the provenance fields (``PROVENANCE``: the evidence span) are not part of the answer, since
    any span of the text that states the figure supports it and an annotator's exact span boundaries
    are not a property of a correct extraction; their grounding is enforced at decode time and counted
    apart. ``evidence_overlap`` is the mean token F1 of the answer's evidence with the gold one.
    ``field_accuracy`` is the share of gold fields right (provenance included, exactly);
    ``numeric_match`` is over examples whose gold value (or gold ``value`` field) is a number.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} items but pred has {len(pred)}")
    em = fields_ok = fields_total = num_ok = num_total = 0
    overlaps: list[float] = []
    per_field: dict[str, Counter] = {}
    for g, p in zip(gold, pred):
        if isinstance(g, dict):
            pd_ = p if isinstance(p, dict) else {}
            oks, answer_ok = [], []
            for k, gv in g.items():
                ok = p is not None and _field_match(gv, pd_.get(k), rel_tol)
                oks.append(ok)
                if k not in PROVENANCE:
                    answer_ok.append(ok)
                per_field.setdefault(k, Counter())["ok"] += ok
                per_field[k]["n"] += 1
            fields_ok += sum(oks)
            fields_total += len(oks)
            em += p is not None and all(answer_ok)
            for k in PROVENANCE:
                if isinstance(g.get(k), str) and g[k].strip():
                    overlaps.append(_token_f1(g[k], pd_[k]) if isinstance(pd_.get(k), str) else 0.0)
            gnum, pnum = g.get("value"), pd_.get("value")
        else:
            ok = p is not None and _field_match(g, p, rel_tol)
            em += ok
            fields_ok += ok
            fields_total += 1
            gnum, pnum = g, p
        if parse_number(gnum) is not None and not isinstance(gnum, bool) and (isinstance(gnum, (int, float)) or _is_numeric_string(gnum)):
            num_total += 1
            num_ok += p is not None and numeric_match(gnum, pnum, rel_tol=rel_tol)
    n = len(gold)
    return {
        "n": n,
        "exact_match": em / n if n else 0.0,
        "field_accuracy": fields_ok / fields_total if fields_total else 0.0,
        "evidence_overlap": sum(overlaps) / len(overlaps) if overlaps else None,
        "numeric_match": num_ok / num_total if num_total else None,
        "numeric_n": num_total,
        "invalid": sum(p is None for p in pred),
        "per_field_accuracy": {k: c["ok"] / c["n"] for k, c in sorted(per_field.items())},
    }


def _is_numeric_string(s: Any) -> bool:
    return isinstance(s, str) and bool(re.fullmatch(r"\s*" + _NUMBER.pattern + r"\s*", s))


# --------------------------------------------------------------------------- ROUGE


def rouge_tokens(text: str, lang: str | None = None) -> list[str]:
    """Tokens for ROUGE: characters for Chinese (no spaces between words), lower-cased words otherwise.

    Mixed text (Chinese with Latin words or numbers) keeps each Latin word / number as one token.
    """
    text = str(text or "")
    if lang == "zh" or (lang is None and _CJK.search(text)):
        out: list[str] = []
        for w in _WORD.findall(text.lower()):
            if _CJK.search(w):
                # Split CJK runs into characters, keep embedded Latin/digit runs whole.
                out.extend(re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+", w))
            else:
                out.append(w)
        return out
    return _WORD.findall(text.lower())


def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge(reference: str, candidate: str | None, lang: str | None = None) -> dict[str, float]:
    """ROUGE-1/2/L F1 of one candidate against one reference (Lin 2004, no stemming)."""
    if candidate is None:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    r, c = rouge_tokens(reference, lang), rouge_tokens(candidate, lang)
    out = {}
    for n in (1, 2):
        rg, cg = _ngrams(r, n), _ngrams(c, n)
        out[f"rouge{n}"] = _prf(sum((rg & cg).values()), sum(cg.values()), sum(rg.values()))[2]
    out["rougeL"] = _prf(_lcs(r, c), len(c), len(r))[2]
    return out


def rouge_scores(gold: Sequence[str], pred: Sequence[str | None], lang: str | None = None) -> dict[str, Any]:
    """Mean ROUGE-1/2/L F1 over examples (invalid outputs score 0)."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} items but pred has {len(pred)}")
    rows = [
        rouge(g if isinstance(g, str) else _as_text(g), None if p is None else (p if isinstance(p, str) else _as_text(p)), lang)
        for g, p in zip(gold, pred)
    ]
    n = len(rows)
    mean = {k: (sum(r[k] for r in rows) / n if n else 0.0) for k in ("rouge1", "rouge2", "rougeL")}
    return {"n": n, **mean, "invalid": sum(p is None for p in pred)}


def _as_text(v: Any) -> str:
    """Text of a non-string summary value (e.g. a list of key points)."""
    if isinstance(v, list):
        return "\n".join(map(str, v))
    if isinstance(v, dict):
        return "\n".join(f"{k}: {x}" for k, x in v.items())
    return str(v)


# --------------------------------------------------------------------------- dispatch

#: The headline number of each metric family (used in reports and the stage comparison plot).
PRIMARY = {"classification": "weighted_f1", "ner": "f1", "extraction": "exact_match", "rouge": "rougeL"}


def score(
    metric: str, gold: Sequence[Any], pred: Sequence[Any | None], labels: Sequence[str] | None = None, lang: str | None = None
) -> dict[str, Any]:
    """Score with a template's metric family: classification, ner, extraction or rouge."""
    if metric == "classification":
        return classification_scores(list(gold), list(pred), labels)
    if metric == "ner":
        return entity_scores(gold, pred)
    if metric in ("extraction", "exact_match", "numeric"):
        return extraction_scores(gold, pred)
    if metric == "rouge":
        return rouge_scores(gold, pred, lang)
    raise ValueError(f"unknown metric {metric!r}; known: {sorted(PRIMARY)}")


def primary(metric: str, scores: dict[str, Any]) -> float:
    key = PRIMARY.get(metric, "exact_match" if metric in ("exact_match", "numeric") else "")
    v = scores.get(key)
    return float(v) if isinstance(v, (int, float)) else 0.0
