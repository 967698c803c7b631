"""The OpenAI-compatible feature: ``/v1/models`` and ``/v1/chat/completions`` (plain and streamed).

A streamed answer holds its admission slot until the last event (or the client leaves); timeouts
and engine errors after the first byte end the stream with an error event, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import jsonschema
from fastapi.responses import StreamingResponse

from domain_lm.inference import EngineError, GenerationRequest, GenerationResult, stream_results
from services.errors import api_error
from services.handler import Call, Handler
from services.openai.schemas import ChatCompletionRequest
from services.security import CHAT


def _schema_of(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` asks for (422 when it is not a valid schema)."""
    if not fmt or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = (spec.get("schema") if isinstance(spec, dict) else None) or {"type": "object"}
    elif fmt.get("type") == "json_object":
        schema = {"type": "object"}
    else:
        raise api_error(400, "invalid_request", f"unsupported response_format type {str(fmt.get('type'))[:40]!r}")
    try:
        if not isinstance(schema, dict):
            raise jsonschema.SchemaError("a schema must be an object")
        jsonschema.Draft202012Validator.check_schema(schema)
    except (jsonschema.SchemaError, RecursionError) as e:
        message = e.message if isinstance(e, jsonschema.SchemaError) else "too deeply nested"
        raise api_error(
            422, "invalid_input", f"response_format schema is not a valid JSON schema: {message}", field="response_format"
        ) from None
    return schema


class HeldStream(StreamingResponse):
    """Server-sent events that give their admission slot back however the response ends: finished,
    client gone, or never started (a client that disconnects before the first byte)."""

    def __init__(self, events: AsyncIterator[str], slot: AsyncExitStack):
        super().__init__(events, media_type="text/event-stream")
        self._events = events
        self._slot = slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # type: ignore[attr-defined]  # stops generation (vLLM aborts the request)
            await self._slot.aclose()


def completion(result: GenerationResult, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": result.finish_reason, "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


class ChatHandler(Handler):
    def models(self) -> dict[str, Any]:
        engine = self.engine
        now = int(time.time())
        ids = [engine.model_name, *sorted(engine.adapters)]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "domain-lm"} for i in ids]}

    def request(self, call: Call, body: ChatCompletionRequest) -> GenerationRequest:
        """Permission, model/adapter choice and limits: everything checked before a slot is taken."""
        call.note(task=CHAT)
        if not call.principal.may_run(CHAT):
            raise api_error(403, "forbidden", f"key {call.principal.id!r} may not use free-form chat")
        engine = self.engine
        adapter = None
        if body.model and body.model != engine.model_name:
            if body.model not in engine.adapters:
                raise api_error(404, "model_not_found", f"model {body.model!r} is not served; see /v1/models")
            adapter = body.model
        limit = self.settings.max_input_chars
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        if sum(len(m["content"]) for m in messages) > limit:
            raise api_error(422, "invalid_input", f"messages exceed {limit} characters", field="messages")
        json_schema = _schema_of(body.response_format)
        if self.settings.log_bodies:
            call.note(body=messages)
        return GenerationRequest(
            messages=messages,
            max_tokens=min(body.max_completion_tokens or body.max_tokens or 256, self.settings.max_chat_tokens),
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop,  # already a list of non-empty strings (schemas.ChatCompletionRequest)
            json_schema=json_schema,
            adapter=adapter,
        )

    def _count(self, result: GenerationResult) -> None:
        self.state.metrics.tokens.labels(CHAT, "prompt").inc(result.prompt_tokens)
        self.state.metrics.tokens.labels(CHAT, "completion").inc(result.completion_tokens)

    async def complete(self, call: Call, body: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        gen = self.request(call, body)
        engine = self.engine
        model = body.model or engine.model_name
        if body.stream:
            slot = AsyncExitStack()
            await slot.enter_async_context(self.admitted(1))  # 429/422 now; given back when the stream ends
            return HeldStream(self._sse(engine, gen, model), slot)
        async with self.guarded(1, task=CHAT):
            result = await engine.generate(gen)
        self._count(result)
        return completion(result, model)

    async def _sse(self, engine: Any, gen: GenerationRequest, model: str) -> AsyncIterator[str]:
        """Deltas of the cumulative results as OpenAI chunks; errors end the stream with an error event."""
        cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        sent, last = "", None
        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            async with asyncio.timeout(self.settings.request_timeout_s):
                async for last in stream_results(engine, gen):
                    if len(last.text) > len(sent) and last.text.startswith(sent):
                        yield chunk({"content": last.text[len(sent) :]}, None)
                        sent = last.text
            if last is not None:
                self._count(last)
                yield chunk({}, last.finish_reason or "stop")
            yield "data: [DONE]\n\n"
        except (TimeoutError, EngineError) as e:
            detail = self.error(e, CHAT).detail
            kind = "timeout" if isinstance(e, TimeoutError) else "engine_rejected"
            yield f"data: {json.dumps({'error': {'message': detail['message'], 'type': kind}}, ensure_ascii=False)}\n\n"
