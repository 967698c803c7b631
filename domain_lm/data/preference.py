"""Preference data for the reward model, PPO and DPO.

Every source becomes a list of ``PreferencePair`` (chat ``prompt`` messages, ``chosen`` and
``rejected`` assistant answers), written as JSONL and handed to TRL in its conversational
format (``to_trl``). Sources:

* the embedded HH-RLHF pairs (``embedded_pairs``), the demo's default: used when no preference
  file and no task dataset is configured;
* files (``load_preferences``): plain pairs ``{"prompt","chosen","rejected"}``, ranked lists
  ``{"prompt","responses":[best, ..., worst]}`` (every ordered pair), and Anthropic HH dialogues
  ``{"chosen","rejected"}`` (the shared dialogue prefix becomes the prompt);
* labelled bank-task records (``task_pairs``, ``records.TaskRecord``): the gold answer is chosen;
  the task's output contract supplies the rejected ones (a wrong label, an answer that breaks the
  contract, numbers that are not in the source). Prompts come from ``TaskTemplate.render_messages``,
  the same rendering as SFT and serving;
* samples from a model (``sampled_pairs``): k answers per prompt ranked by the task metric.
"""

from __future__ import annotations

import json
import random
import re
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from pydantic import BaseModel, ConfigDict, Field

from domain_lm.data.records import TaskRecord, load_split
from domain_lm.errors import DataError
from domain_lm.tasks import TaskTemplate, metrics


class Templates(Protocol):
    """Templates by task name: a ``TemplateRegistry`` or a plain dict such as ``Split.templates``."""

    def get(self, name: str, /) -> Any: ...


class PreferencePair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: list[dict[str, str]] = Field(description="Chat messages before the answer (system/user/assistant turns).")
    chosen: str
    rejected: str
    kind: str = Field(
        "pair",
        pattern=r"^[a-z_]{1,40}$",
        description="Where the pair comes from (pair, ranked, hh, sampled) or, for task pairs, why the rejected answer is worse "
        "as the task's output contract says (wrong_label, contract, unfaithful_numbers, incomplete, ...).",
    )
    task: str | None = None
    lang: str | None = None

    def to_trl(self) -> dict[str, Any]:
        """TRL's conversational preference format (RewardTrainer, DPOTrainer)."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


# --------------------------------------------------------------------------- file formats

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_dialogue(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> chat messages (user/assistant)."""
    parts = _HH_TURN.split(text)
    # parts = [preamble, role, content, role, content, ...]
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def hh_pair(record: dict[str, Any]) -> PreferencePair | None:
    """An HH record -> a pair whose prompt is the shared dialogue before the final answers.

    Returns None when the two dialogues do not share their history or do not end in an
    assistant turn (a handful of upstream rows), so one odd row never stops an import.
    """
    chosen, rejected = parse_hh_dialogue(record["chosen"]), parse_hh_dialogue(record["rejected"])
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return None
    if chosen[:-1] != rejected[:-1] or not chosen[:-1]:
        return None
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return None
    return PreferencePair(prompt=chosen[:-1], chosen=chosen[-1]["content"], rejected=rejected[-1]["content"], kind="hh")


def _as_messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    raise ValueError("prompt must be a string or a list of {role, content} messages")


def _as_answer(x: Any) -> str:
    """An answer may be a string or TRL's conversational ``[{"role":"assistant","content":...}]``."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict) and "content" in x[-1]:
        return str(x[-1]["content"])
    raise ValueError("an answer must be a string or a list of messages")


def record_to_pairs(record: dict[str, Any]) -> list[PreferencePair]:
    """One JSON record in any supported format -> pairs (ranked lists give k*(k-1)/2)."""
    meta = {k: record[k] for k in ("task", "lang") if isinstance(record.get(k), str)}
    if "responses" in record or "ranked" in record:
        ranked = [_as_answer(r) for r in record.get("responses", record.get("ranked"))]
        prompt = _as_messages(record["prompt"])
        return [PreferencePair(prompt=prompt, chosen=a, rejected=b, kind="ranked", **meta) for a, b in combinations(ranked, 2) if a != b]
    if "chosen" in record and "rejected" in record:
        if "prompt" in record:
            kind = record.get("kind", "pair")
            return [
                PreferencePair(
                    prompt=_as_messages(record["prompt"]),
                    chosen=_as_answer(record["chosen"]),
                    rejected=_as_answer(record["rejected"]),
                    kind=kind,
                    **meta,
                )
            ]
        pair = hh_pair(record)
        return [pair] if pair else []
    raise ValueError("expected keys prompt/chosen/rejected, prompt/responses (ranked), or chosen/rejected (HH dialogues)")


def _iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json preference file must hold a list of records.")
        yield from enumerate(data, start=1)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}). Preference files are JSON Lines, one record per line."
                ) from None


def load_preferences(path: str | Path, limit: int | None = None) -> list[PreferencePair]:
    """Read a preference file (.jsonl or .json) in any supported format."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Preference file {p} does not exist. Pass a JSONL file of pairs, ranked lists or HH dialogues.")
    pairs: list[PreferencePair] = []
    for lineno, rec in _iter_records(p):
        try:
            pairs.extend(record_to_pairs(rec))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{p}:{lineno}: {e}.") from None
        if limit is not None and len(pairs) >= limit:
            return pairs[:limit]
    return pairs


def save_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> int:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with p.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.model_dump(exclude_none=True), ensure_ascii=False) + "\n")
            n += 1
    return n


def split_pairs(pairs: Sequence[PreferencePair], eval_fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Seeded shuffle split; pairs sharing a prompt stay on one side so eval is truly held out."""
    groups: dict[str, list[PreferencePair]] = {}
    for pair in pairs:
        groups.setdefault(json.dumps(pair.prompt, sort_keys=True), []).append(pair)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_eval = round(len(keys) * eval_fraction)
    if eval_fraction > 0 and len(keys) > 1:
        n_eval = max(1, n_eval)
    eval_keys = set(keys[:n_eval])
    train = [p for k in keys if k not in eval_keys for p in groups[k]]
    held = [p for k in keys if k in eval_keys for p in groups[k]]
    return train, held


# --------------------------------------------------------------------------- bank-task pairs


def rejected_answers(template: TaskTemplate, inputs: dict[str, Any], lang: str, gold: Any, rng: random.Random) -> list[tuple[str, str]]:
    """The rejected answers this record supports, each with the reason it is worse (the task's output
    contract decides which: another label, numbers not in the source, a broken answer, ...)."""
    chosen = template.target_text(gold, lang=lang)
    found = template.output.rejected_answers(gold, inputs, lang, rng)
    return [(why, text) for why, text in found if text.strip() != chosen.strip()]


def _render(template: TaskTemplate, inputs: dict[str, Any], lang: str, rng: random.Random) -> list[dict[str, str]]:
    return template.render_messages(inputs, lang=lang, variant=rng.randrange(max(1, template.num_variants(lang))))


def task_pairs(
    records: Iterable[TaskRecord], templates: Templates, seed: int = 42, max_per_record: int | None = None
) -> list[PreferencePair]:
    """Pairs from labelled task data: gold answer chosen; wrong/contract-breaking/unfaithful rejected.

    ``templates`` gives each record's template by task name (a ``TemplateRegistry`` or ``Split.templates``).
    """
    rng = random.Random(seed)
    pairs: list[PreferencePair] = []
    for r in records:
        template = templates.get(r.task)
        prompt = _render(template, r.inputs, r.lang, rng)
        chosen = template.target_text(r.output, lang=r.lang)
        for kind, text in rejected_answers(template, r.inputs, r.lang, r.output, rng)[:max_per_record]:
            pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=text, kind=kind, task=template.name, lang=r.lang))
    return pairs


# --------------------------------------------------------------------------- pairs from samples


def answer_score(template: TaskTemplate, text: str, gold: Any, lang: str) -> float:
    """How good one model answer is under the task's metric (0 when it breaks the contract)."""
    try:
        value = template.parse_output(text, lang=lang)
    except Exception:  # noqa: BLE001 - a contract break scores zero
        return 0.0
    return metrics.primary(template.metric, template.score([gold], [value], lang=lang))


def sampled_pairs(
    records: Sequence[TaskRecord],
    templates: Templates,
    engine: Any,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_tokens: int = 128,
    seed: int = 42,
    scorer: Callable[[Any, str, Any, str], float] = answer_score,
    min_margin: float = 1e-6,
) -> list[PreferencePair]:
    """Sample ``k`` answers per record from ``engine`` (the INFERENCE API), rank them by the task
    metric, and pair the best with the worst when their scores differ by more than ``min_margin``."""
    from domain_lm.inference import GenerationRequest

    rng = random.Random(seed)
    prompts = [_render(templates.get(r.task), r.inputs, r.lang, rng) for r in records]
    requests = [
        GenerationRequest(messages=msgs, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed + 1000 * i + j)
        for i, msgs in enumerate(prompts)
        for j in range(k)
    ]
    results = engine.generate_batch(requests)
    pairs = []
    for i, r in enumerate(records):
        template = templates.get(r.task)
        answers = [res.text for res in results[i * k : (i + 1) * k]]
        scored = sorted(((scorer(template, a, r.output, r.lang), a) for a in set(answers)), key=lambda x: -x[0])
        if len(scored) >= 2 and scored[0][0] - scored[-1][0] > min_margin:
            pair = PreferencePair(
                prompt=prompts[i], chosen=scored[0][1], rejected=scored[-1][1], kind="sampled", task=template.name, lang=r.lang
            )
            pairs.append(pair)
    return pairs


# --------------------------------------------------------------------------- from the pipeline config


def build_preference_data(
    config: Any, engine: Any = None, registry: Any = None
) -> tuple[list[PreferencePair], list[PreferencePair], dict[str, int]]:
    """All preference pairs the config asks for, split train/eval by prompt; plus counts per kind.

    Shared by the reward and DPO stages so both train on the same pairs. Bank-task pairs come from
    the train side of ``records.load_split`` (the split SFT and eval use), so RLHF never trains on a
    held-out record. ``engine`` (the INFERENCE API, on the upstream model) is needed only when
    ``reward.sample_k > 0``.
    """
    cfg = config.reward
    pairs: list[PreferencePair] = []
    for src in cfg.preference_sources:
        pairs += load_preferences(src, limit=cfg.max_pairs_per_source)
    if uses_embedded_pairs(config):
        pairs += embedded_pairs(limit=cfg.max_pairs_per_source)
    if cfg.from_tasks:
        split = load_split(config, registry)
        pairs += task_pairs(split.train, split.templates, seed=config.tasks.seed)
        if cfg.sample_k > 0 and engine is not None:
            sample = random.Random(config.tasks.seed).sample(split.train, min(cfg.sample_records, len(split.train)))
            pairs += sampled_pairs(sample, split.templates, engine, k=cfg.sample_k, seed=config.tasks.seed)
    if not pairs:
        raise DataError(
            "No preference pairs: set reward.preference_sources to pair/ranked/HH files, or reward.from_tasks=true with labelled task data."
        )
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    train, held = split_pairs(pairs, cfg.eval_fraction, cfg.train.seed)
    return train, held, counts


def uses_embedded_pairs(config: Any) -> bool:
    """The demo's default: the embedded HH pairs when neither preference files nor task datasets are
    configured (a configured run, e.g. a Chinese one, gets only what it names)."""
    return not config.reward.preference_sources and not config.tasks.datasets


def embedded_pairs(limit: int | None = None) -> list[PreferencePair]:
    """The embedded HH-RLHF preference pairs (``domain_lm/resources/datasets/hh_rlhf``, MIT)."""
    from domain_lm.data import embedded

    pairs: list[PreferencePair] = []
    for name in embedded.available("preference"):
        for record in embedded.records(name):
            pairs += record_to_pairs(record)
    return pairs[:limit] if limit is not None else pairs


def data_hashes(config: Any) -> dict[str, str]:
    from domain_lm.core.hashing import sha256_file
    from domain_lm.data import embedded

    out = {f"preferences:{s}": sha256_file(s) for s in config.reward.preference_sources if Path(s).is_file()}
    if uses_embedded_pairs(config):
        out.update({f"embedded:{n}": embedded.info(n).content_sha256 for n in embedded.available("preference")})
    return out
