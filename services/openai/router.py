"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models`` (the ``openai`` SDK and LangChain work).

``model`` selects the base model (its name) or one of the LoRA adapters (the adapter name).
``response_format`` with a JSON schema is enforced at decode time like a json task. ``stream``
sends server-sent events as tokens arrive (engines with ``stream``: vLLM), else one content chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from domain_lm.inference import EngineError, GenerationRequest, GenerationResult, stream_results
from services.admission import QueueFull
from services.deps import ApiKeyDep, EngineDep, StateDep, api_error
from services.security import CHAT

router = APIRouter(prefix="/v1", tags=["openai"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we ignore (user, logprobs=False...)

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="Only n=1 is supported.")
    stream: bool = False
    response_format: dict[str, Any] | None = None


def _schema_of(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fmt or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    raise api_error(400, "invalid_request", f"unsupported response_format type {fmt.get('type')!r}")


@router.get("/models", summary="The base model and its adapters, OpenAI style")
def list_models(engine: EngineDep, principal: ApiKeyDep) -> dict[str, Any]:  # noqa: ARG001
    now = int(time.time())
    ids = [engine.model_name, *sorted(engine.adapters)]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "domain-lm"} for i in ids]}


@router.post("/chat/completions", summary="OpenAI-compatible chat completion")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: StateDep, engine: EngineDep, principal: ApiKeyDep):
    request.scope["dlm_task"] = CHAT
    if not principal.may_run(CHAT):
        raise api_error(403, "forbidden", f"key {principal.id!r} may not use free-form chat")
    adapter = None
    if body.model and body.model != engine.model_name:
        if body.model not in engine.adapters:
            raise api_error(404, "model_not_found", f"model {body.model!r} is not served; see /v1/models")
        adapter = body.model
    max_tokens = min(body.max_completion_tokens or body.max_tokens or 256, state.settings.max_chat_tokens)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    if sum(len(m["content"]) for m in messages) > state.settings.max_input_chars:
        raise api_error(422, "invalid_input", f"messages exceed {state.settings.max_input_chars} characters", field="messages")
    if state.settings.log_bodies:
        request.scope["dlm_body"] = messages
    gen = GenerationRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop,
        json_schema=_schema_of(body.response_format),
        adapter=adapter,
    )
    if body.stream:
        try:
            state.admission.acquire()  # released when the stream ends
        except QueueFull as e:
            state.metrics.rejected.labels("queue_full").inc()
            raise api_error(429, "queue_full", str(e), headers={"Retry-After": "1"}) from None
        return StreamingResponse(_sse(state, engine, gen, body.model or engine.model_name), media_type="text/event-stream")
    try:
        with state.admission.slot():
            result = await asyncio.wait_for(engine.generate(gen), state.settings.request_timeout_s)
    except QueueFull as e:
        state.metrics.rejected.labels("queue_full").inc()
        raise api_error(429, "queue_full", str(e), headers={"Retry-After": "1"}) from None
    except (asyncio.TimeoutError, TimeoutError):
        state.metrics.rejected.labels("timeout").inc()
        raise api_error(504, "timeout", f"no answer within {state.settings.request_timeout_s:g}s") from None
    except EngineError as e:
        raise api_error(400, "engine_rejected", str(e)) from None
    _count(state, result)
    return _completion(result, body.model or engine.model_name)


def _count(state, result: GenerationResult) -> None:
    state.metrics.tokens.labels(CHAT, "prompt").inc(result.prompt_tokens)
    state.metrics.tokens.labels(CHAT, "completion").inc(result.completion_tokens)


def _completion(result: GenerationResult, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


async def _sse(state, engine, gen: GenerationRequest, model: str):
    """Deltas of the cumulative results as OpenAI chunks; errors end the stream with an error event."""
    cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    sent, last = "", None
    try:
        yield chunk({"role": "assistant", "content": ""}, None)
        async with asyncio.timeout(state.settings.request_timeout_s):
            async for last in stream_results(engine, gen):
                if len(last.text) > len(sent) and last.text.startswith(sent):
                    yield chunk({"content": last.text[len(sent) :]}, None)
                    sent = last.text
        if last is not None:
            _count(state, last)
            yield chunk({}, last.finish_reason or "stop")
        yield "data: [DONE]\n\n"
    except (TimeoutError, EngineError) as e:
        message = f"no answer within {state.settings.request_timeout_s:g}s" if isinstance(e, TimeoutError) else str(e)
        yield f"data: {json.dumps({'error': {'message': message, 'type': 'timeout' if isinstance(e, TimeoutError) else 'engine_rejected'}})}\n\n"
    finally:
        state.admission.release()
