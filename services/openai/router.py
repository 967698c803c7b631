"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models`` (the ``openai`` SDK and LangChain work).

``model`` selects the base model (its name) or one of the LoRA adapters (the adapter name).
``response_format`` with a JSON schema is enforced at decode time like a json task. ``stream``
sends server-sent events as tokens arrive (engines with ``stream``: vLLM), else one content chunk.
Thin: the work is ``ChatHandler``'s (``services.openai.handler``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from services.deps import ApiKeyDep, CallDep, StateDep
from services.openai.handler import ChatHandler
from services.openai.schemas import ChatCompletionRequest

router = APIRouter(prefix="/v1", tags=["openai"])


def get_handler(state: StateDep) -> ChatHandler:
    return ChatHandler.for_request(state)


HandlerDep = Annotated[ChatHandler, Depends(get_handler)]


@router.get("/models", summary="The base model and its adapters, OpenAI style")
def list_models(handler: HandlerDep, principal: ApiKeyDep) -> dict[str, Any]:  # noqa: ARG001
    return handler.models()


@router.post("/chat/completions", summary="OpenAI-compatible chat completion")
async def chat_completions(body: ChatCompletionRequest, handler: HandlerDep, call: CallDep):
    return await handler.complete(call, body)
