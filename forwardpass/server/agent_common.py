"""What the Responses and Messages APIs share: they translate their requests into a chat-completions request and
run it through the same admission, tokenization, context checks, engine, metrics and disconnect handling as
/v1/chat/completions (``openai_routes.generate``); only the shapes of bodies and streams differ.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..outputs import CompletionOutput
from . import tool_seam
from .errors import APIError
from .generation import RequestGroup
from .openai_routes import BodyFn, StreamFn, generate
from .protocol import ChatRequest, Limits, parse_chat_request
from .sse import event
from .state import ServerState


def chat_request(body: dict[str, Any], limits: Limits, rename: Mapping[str, str]) -> ChatRequest:
    """Validate a chat-completions body built from another API's request; errors name that API's fields."""
    try:
        return parse_chat_request(body, limits)
    except APIError as e:
        if e.param in rename:
            e.param = rename[e.param]
        raise


async def generate_chat(
    request: Request,
    req: ChatRequest,
    session: tool_seam.ToolSession,
    rid: str,
    param: str,
    stream_fn: StreamFn,
    body_fn: BodyFn,
    cap_max_tokens: int | None = None,
    prefill: str = "",
) -> Response:
    """Run `req` like a chat completion, its prompt and constraint from `session`. With `cap_max_tokens`
    (Anthropic's required max_tokens), the limit is what is left of the context when that is less, instead of a
    400: clients send one large value whatever the model."""
    state: ServerState = request.app.state.server
    assert state.limits is not None
    n_ctx = state.limits.n_ctx
    render = session.tokenizer(prefill)

    def tokenize() -> list[list[int]]:
        prompts = render()
        if cap_max_tokens is not None:  # generate() reads req.params after this; no room at all stays a 400
            req.params = replace(req.params, max_tokens=max(1, min(cap_max_tokens, n_ctx - len(prompts[0]))))
        return prompts

    return await generate(request, req, rid, 1, tokenize, param, stream_fn, body_fn, session.structured_param)


async def follow(group: RequestGroup) -> AsyncIterator[CompletionOutput]:
    """The single sample of a one-prompt request, each time it changes, until it has finished (raises the
    engine's error)."""
    while True:
        out = (await group.next_update())[0].outputs[0]
        yield out
        if out.finished:
            return


def cached_tokens(group: RequestGroup) -> int:
    out = group.latest[0]
    return out.num_cached_tokens if out is not None else 0


def named_event(data: dict[str, Any]) -> bytes:
    """An SSE event whose name is the payload's ``type`` (the Responses and Messages streams)."""
    return b"event: " + data["type"].encode("ascii") + b"\n" + event(data)


def arguments_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
