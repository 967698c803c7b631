"""Transformers fallback engine for machines where vLLM cannot run.

Contracts are enforced too: label requests pick the choice with the highest likelihood (no free
generation at all); JSON and regex requests use xgrammar constrained decoding when xgrammar is
installed, else validate-and-retry. Concurrent async callers are micro-batched by one worker
thread, so the model is used by one thread at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from domain_lm.inference.base import EngineError, GenerationRequest, GenerationResult, check_adapter, choice_continuations, encode_prompt
from domain_lm.models.loading import load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

#: Compiled grammars kept (JSON schemas and regexes come from clients: the cache must not grow without end).
GRAMMAR_CACHE_SIZE = 128


def _grammar_compiler(tokenizer: Any, vocab_size: int):
    try:
        import xgrammar as xgr
    except ImportError:
        return None
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[tokenizer.eos_token_id])
    return xgr.GrammarCompiler(info)


class _GrammarProcessor:
    """Per-row xgrammar masks inside ``model.generate``; rows without a grammar are left free."""

    def __init__(self, grammars: list[Any | None], vocab_size: int, eos_id: int):
        import xgrammar as xgr

        self.xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.eos_id = eos_id
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:
            for i, m in enumerate(self.matchers):
                if m is not None and not m.is_terminated():
                    m.accept_token(int(input_ids[i, -1]))
        self.started = True
        rows = []
        for i, m in enumerate(self.matchers):
            if m is None:
                continue
            rows.append(i)
            if m.is_terminated():
                scores[i, :] = float("-inf")  # finished: only padding/EOS from here on
                scores[i, self.eos_id] = 0.0
            else:
                m.fill_next_token_bitmask(self.bitmask, i)
        if rows:
            masked = scores[rows].clone()
            self.xgr.apply_token_bitmask_inplace(masked, self.bitmask[rows])
            for j, i in enumerate(rows):
                if not self.matchers[i].is_terminated():
                    scores[i] = masked[j]
        return scores


class _PerRowBudget:
    """Stops each row at its own ``max_tokens`` (transformers accepts a per-row bool tensor)."""

    def __init__(self, prompt_len: int, budgets: list[int]):
        self.prompt_len = prompt_len
        self.budgets = torch.tensor(budgets)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - self.prompt_len) >= self.budgets


class HFEngine:
    """``transformers`` generate with batching, adapters via PEFT, and contract enforcement."""

    def __init__(
        self,
        model_path: str | Path,
        adapters: dict[str, str] | None = None,
        *,
        max_batch_size: int = 8,
        json_retries: int = 2,
        constrained: bool = True,
        model_name: str | None = None,
        **_ignored: Any,
    ):
        self.model_path = str(model_path)
        self.model_name = model_name or Path(self.model_path).name
        self.adapters = dict(adapters or {})
        self.max_batch_size = max_batch_size
        self.json_retries = json_retries
        self.tokenizer = load_tokenizer(self.model_path)
        self.tokenizer.padding_side = "left"
        model = load_causal_lm(self.model_path, dtype=torch.float32)
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            model = PeftModel.from_pretrained(model, self.adapters[names[0]], adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(self.adapters[name], adapter_name=name)
            model.eval()
        self.model = model
        self.vocab_size = int(model.config.vocab_size)
        self.eos_id = int(self.tokenizer.eos_token_id)
        self._compiler = _grammar_compiler(self.tokenizer, self.vocab_size) if constrained else None
        self._grammar_cache: OrderedDict[str, Any] = OrderedDict()
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self._lock = threading.Lock()  # one model user at a time
        self._queue: queue.Queue[tuple[GenerationRequest, Future] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="hf-engine", daemon=True)
        self._worker.start()
        self._closed = False

    # ------------------------------------------------------------------ contract

    def is_ready(self) -> bool:
        return not self._closed and self._worker.is_alive()

    def _check(self, request: GenerationRequest) -> None:
        """Refuse what the model cannot do before generating: an unknown adapter, a prompt too long.

        A prompt that leaves room for its answer is accepted; ``max_tokens`` is an upper bound that
        generation caps at the context left (as vLLM does), so only a label whose choices cannot fit,
        or a prompt that fills the context, is refused."""
        check_adapter(self, request.adapter)
        if self.context_length is None:
            return
        n = len(encode_prompt(self.tokenizer, request))
        longest = (
            max((len(self.tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in request.choices), default=0)
            if request.choices
            else 0
        )
        need = n + (longest if request.choices is not None else 1)
        if need > self.context_length:
            raise EngineError(
                f"This model's context is {self.context_length} tokens; the prompt has {n} and the answer needs at least "
                f"{need - n} more. Shorten the input."
            )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        check_adapter(self, request.adapter)  # the length check tokenizes: done by the worker, off the event loop
        fut: Future = Future()
        self._queue.put((request, fut))
        return await asyncio.wrap_future(fut)

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        for r in requests:
            self._check(r)
        out: list[GenerationResult] = []
        for i in range(0, len(requests), self.max_batch_size):
            with self._lock:
                out += self._run_batch(requests[i : i + self.max_batch_size])
        return out

    def add_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter while serving: under the model lock, so no batch runs meanwhile (callers
        wait in the queue; none is dropped). The first adapter wraps the model in PEFT."""
        if name in self.adapters:
            raise EngineError(f"adapter {name!r} is already loaded")
        from peft import PeftModel

        with self._lock:
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise EngineError(f"adapter {name!r} could not be loaded: {e}") from e
            self.model.eval()
            self.adapters[name] = str(path)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    # ------------------------------------------------------------------ worker (micro-batching)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel() and self._admissible(r, f)]
            if not live:
                continue
            try:
                with self._lock:
                    results = self._run_batch([r for r, _ in live])
                for (_, f), res in zip(live, results):
                    f.set_result(res)
            except Exception as e:  # a failed batch fails its callers, never the worker
                log.exception("HF engine batch failed")
                for _, f in live:
                    f.set_exception(e if isinstance(e, EngineError) else EngineError(f"generation failed: {e}"))

    def _admissible(self, request: GenerationRequest, fut: Future) -> bool:
        """False (and the caller told why) for a request the model cannot take."""
        try:
            self._check(request)
        except EngineError as e:
            fut.set_exception(e)
            return False
        return True

    # ------------------------------------------------------------------ batching by kind

    def _run_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            kind = "choice" if r.choices is not None else "gen"
            groups.setdefault((r.adapter, kind, r.temperature, r.top_p), []).append(i)
        for (adapter, kind, _, _), idx in groups.items():
            with self._adapter(adapter):
                sub = [requests[i] for i in idx]
                got = self._choose(sub) if kind == "choice" else self._generate_checked(sub)
            for i, res in zip(idx, got):
                results[i] = res
        return results  # type: ignore[return-value]

    def _adapter(self, adapter: str | None):
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _encode(self, requests: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded prompt ids and attention mask for a batch."""
        seqs = [encode_prompt(self.tokenizer, r) for r in requests]
        width = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([[pad] * (width - len(s)) + s for s in seqs]),
            "attention_mask": torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs]),
        }

    # ------------------------------------------------------------------ labels: pick by likelihood

    @torch.no_grad()
    def _choose(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Score every (prompt, choice + EOS) continuation; the most likely choice is the answer."""
        pairs: list[tuple[int, str, list[int], list[int]]] = []
        for i, r in enumerate(requests):
            prompt_ids = encode_prompt(self.tokenizer, r)
            for c, cont in choice_continuations(self.tokenizer, r, self.eos_id):
                pairs.append((i, c, prompt_ids, cont))
        scores: list[float] = []
        for start in range(0, len(pairs), self.max_batch_size * 2):
            chunk = pairs[start : start + self.max_batch_size * 2]
            seqs = [p + c for _, _, p, c in chunk]
            width = max(map(len, seqs))
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            # Only the last positions predict continuation tokens: keep just their logits (the
            # full (B, T, V) tensor is most of the cost for long prompts and a large vocabulary).
            keep = max(len(c) for _, _, _, c in chunk) + 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            logp = torch.log_softmax(logits.float(), dim=-1)  # (B, keep, V); column j is position width - keep + j
            for row, (_, _, p, c) in enumerate(chunk):
                first = width - len(c)  # position of the first continuation token
                positions = torch.arange(first - 1, width - 1) - (width - keep)
                scores.append(float(logp[row, positions, torch.tensor(c)].sum()))
        best: dict[int, tuple[float, str, int, int]] = {}
        per_choice: dict[int, dict[str, float]] = {}
        for (i, c, p, cont), s in zip(pairs, scores):
            per_choice.setdefault(i, {})[c] = s
            if i not in best or s > best[i][0]:
                best[i] = (s, c, len(p), len(cont) - 1)
        return [
            GenerationResult(
                text=best[i][1],
                prompt_tokens=best[i][2],
                completion_tokens=best[i][3],
                finish_reason="stop",
                choice_logprobs=per_choice[i] if r.score_choices else None,
            )
            for i, r in enumerate(requests)
        ]

    # ------------------------------------------------------------------ free / constrained generation

    def _grammar(self, r: GenerationRequest):
        if self._compiler is None or (r.json_schema is None and r.regex is None):
            return None
        key = json.dumps(r.json_schema, sort_keys=True) if r.json_schema is not None else "re:" + (r.regex or "")
        cache = self._grammar_cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        if r.json_schema is not None:
            # Compact separators: what SFT targets (``JsonOutput.target_text``) and the vLLM engine write.
            g = self._compiler.compile_json_schema(json.dumps(r.json_schema), any_whitespace=False, separators=(",", ":"))
        else:
            g = self._compiler.compile_regex(r.regex)
        cache[key] = g
        while len(cache) > GRAMMAR_CACHE_SIZE:  # least recently used first
            cache.popitem(last=False)
        return g

    def _generate_checked(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate; without a grammar, retry (sampling) the answers that break their contract."""
        results = self._generate(requests)
        if self._compiler is not None:
            return results
        for attempt in range(self.json_retries):
            bad = [i for i, (r, res) in enumerate(zip(requests, results)) if not _satisfies(r, res.text)]
            if not bad:
                break
            retry = [requests[i].model_copy(update={"temperature": 0.7, "seed": (requests[i].seed or 0) + attempt + 1}) for i in bad]
            for i, res in zip(bad, self._generate(retry)):
                results[i] = res
        return results

    @torch.no_grad()
    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        enc = self._encode(requests)
        width = enc["input_ids"].shape[1]
        budget = max(r.max_tokens for r in requests)
        if self.context_length is not None:
            budget = max(1, min(budget, self.context_length - width))  # max_tokens is a bound, not a promise
        r0 = requests[0]
        grammars = [self._grammar(r) for r in requests]
        processors = LogitsProcessorList()
        if any(g is not None for g in grammars):
            processors.append(_GrammarProcessor(grammars, self.vocab_size, self.eos_id))
        if r0.seed is not None:
            torch.manual_seed(r0.seed)
        sample = r0.temperature > 0
        out = self.model.generate(
            **enc,
            max_new_tokens=budget,
            do_sample=sample,
            temperature=r0.temperature if sample else None,
            top_p=r0.top_p if sample else None,
            top_k=None,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_PerRowBudget(width, [min(r.max_tokens, budget) for r in requests])]),
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_id,
        )
        results = []
        for row, r in enumerate(requests):
            new = out[row, width:].tolist()
            finish = "length"
            if self.eos_id in new:
                new, finish = new[: new.index(self.eos_id)], "stop"
            if len(new) > r.max_tokens:
                new, finish = new[: r.max_tokens], "length"
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            for s in r.stop or []:
                if s in text:
                    text, finish = text[: text.index(s)], "stop"
            results.append(
                GenerationResult(
                    text=text, prompt_tokens=int(enc["attention_mask"][row].sum()), completion_tokens=len(new), finish_reason=finish
                )
            )
        return results


def _satisfies(r: GenerationRequest, text: str) -> bool:
    """Cheap contract check for validate-and-retry (the TaskRunner does the full check)."""
    if r.regex is not None:
        return re.fullmatch(r.regex, text) is not None
    if r.json_schema is not None:
        try:
            import jsonschema

            jsonschema.validate(json.loads(text), r.json_schema)
        except Exception:
            return False
    return True
