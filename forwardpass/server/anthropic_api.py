"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API).

A request becomes a chat completion (``anthropic_protocol``) and runs like one; errors on these routes take
Anthropic's shape (``errors.is_anthropic_path``). ``max_tokens`` beyond what the context has left is capped to
it (the answer then stops with ``max_tokens``), as every request must send one. The answer's ``content`` holds a
``text`` block and any ``tool_use`` blocks; ``stop_reason`` is ``end_turn``, ``max_tokens``, ``stop_sequence``
(with ``stop_sequence`` set) or ``tool_use``. ``usage.input_tokens`` counts the prompt tokens computed,
``cache_read_input_tokens`` those found in the prefix cache (their sum is the prompt). A stream sends
``message_start``, ``ping``, per block ``content_block_start``, ``content_block_delta`` (``text_delta`` or
``input_json_delta``)..., ``content_block_stop``, then ``message_delta`` (stop reason, output tokens) and
``message_stop``; a failure after the headers is an ``error`` event.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..outputs import CompletionOutput, RequestOutput
from . import tool_seam
from .agent_common import cached_tokens, chat_request, follow, generate_chat, named_event
from .anthropic_protocol import RENAME, MessagesRequest, parse_messages_request
from .errors import APIError, invalid
from .generation import RequestGroup
from .openai_routes import check_model, read_json, tokenize_prompts
from .protocol import ChatRequest
from .state import ServerState

logger = logging.getLogger(__name__)

ABORTED = "the request was aborted (the server is shutting down)"


def _parse(
    request_body: dict[str, Any], state: ServerState, count_only: bool
) -> tuple[MessagesRequest, ChatRequest, tool_seam.ToolSession]:
    assert state.limits is not None and state.llm is not None
    mreq = parse_messages_request(request_body, count_only)
    req = chat_request(mreq.chat_body, state.limits, RENAME)
    check_model(req.model, state)
    if state.llm.chat_template is None:
        raise invalid("this model has no chat template; use /v1/completions", "messages")
    return mreq, req, tool_seam.ToolSession(state, req, RENAME)


def stop_reason(
    out: CompletionOutput, parsed: tool_seam.ParsedOutput, stops: tuple[str, ...]
) -> tuple[str, str | None]:
    if parsed.tool_calls:
        return "tool_use", None
    if out.finish_reason == "length":
        return "max_tokens", None
    if isinstance(out.stop_reason, str) and out.stop_reason in stops:
        return "stop_sequence", out.stop_reason
    return "end_turn", None


def tool_use_block(call: tool_seam.ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments) if call.arguments else {}
    except json.JSONDecodeError:  # only an unconstrained call cut by max_tokens can be invalid
        arguments = {}
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


def usage(prompt_tokens: int, output_tokens: int, cached: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens - cached,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def message(
    mid: str,
    model: str,
    content: list[dict[str, Any]],
    reason: str | None,
    sequence: str | None,
    usage_: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_,
    }


async def messages(request: Request) -> Response:
    state: ServerState = request.app.state.server
    state.check_accepting()
    mreq, req, session = _parse(await read_json(request), state, count_only=False)
    mid = f"msg_{uuid.uuid4().hex}"

    def body_fn(outputs: list[RequestOutput], prompts: list[list[int]], truncated: list[bool]) -> dict[str, Any]:
        out = outputs[0].outputs[0]
        if out.finish_reason == "abort":
            raise APIError(503, ABORTED, type="unavailable_error")
        _, parsed = session.parser().finish(out.text)
        content = [{"type": "text", "text": parsed.text}] if parsed.text or not parsed.tool_calls else []
        content += [tool_use_block(c) for c in parsed.tool_calls]
        reason, sequence = stop_reason(out, parsed, mreq.stop_sequences)
        return message(
            mid,
            state.model_name,
            content,
            reason,
            sequence,
            usage(len(prompts[0]), len(out.token_ids), outputs[0].num_cached_tokens),
        )

    def stream_fn(group: RequestGroup, prompts: list[list[int]], truncated: list[bool]) -> AsyncIterator[bytes]:
        return message_events(group, mid, state.model_name, session.parser(), mreq, len(prompts[0]))

    return await generate_chat(
        request, req, session, mid, "messages", stream_fn, body_fn, cap_max_tokens=mreq.max_tokens, prefill=mreq.prefill
    )


async def count_tokens(request: Request) -> Response:
    state: ServerState = request.app.state.server
    if not state.ready:
        state.check_accepting()
    mreq, req, session = _parse(await read_json(request), state, count_only=True)
    ids = await tokenize_prompts(session.tokenizer(mreq.prefill), session.structured_param)
    return JSONResponse({"input_tokens": len(ids[0])})


class _MessageStream:
    """The content blocks of one streamed message, each closed before the next one opens."""

    def __init__(self) -> None:
        self.index = -1
        self.open = False

    def start(self, block: dict[str, Any]) -> list[bytes]:
        out = self.stop()
        self.index += 1
        self.open = True
        return out + [named_event({"type": "content_block_start", "index": self.index, "content_block": block})]

    def delta(self, delta: dict[str, Any]) -> bytes:
        return named_event({"type": "content_block_delta", "index": self.index, "delta": delta})

    def stop(self) -> list[bytes]:
        if not self.open:
            return []
        self.open = False
        return [named_event({"type": "content_block_stop", "index": self.index})]


async def message_events(
    group: RequestGroup, mid: str, model: str, parser: tool_seam.OutputParser, mreq: MessagesRequest, prompt_tokens: int
) -> AsyncIterator[bytes]:
    st = _MessageStream()
    in_text = False
    yield named_event(
        {
            "type": "message_start",
            "message": message(mid, model, [], None, None, usage(prompt_tokens, 0, cached_tokens(group))),
        }
    )
    yield named_event({"type": "ping"})
    try:
        out: CompletionOutput | None = None
        parsed = tool_seam.ParsedOutput("")
        async for out in follow(group):
            if out.finish_reason == "abort":
                raise RuntimeError(ABORTED)
            events, parsed = (parser.feed(out.text), parsed) if not out.finished else parser.finish(out.text)
            for e in events:
                if e.kind == "text":
                    if not in_text:
                        for chunk in st.start({"type": "text", "text": ""}):
                            yield chunk
                        in_text = True
                    if e.text:
                        yield st.delta({"type": "text_delta", "text": e.text})
                elif e.kind == "call_start":
                    assert e.call is not None
                    in_text = False
                    for chunk in st.start({"type": "tool_use", "id": e.call.id, "name": e.call.name, "input": {}}):
                        yield chunk
                else:
                    yield st.delta({"type": "input_json_delta", "partial_json": e.text})
        assert out is not None
        if st.index < 0:  # an empty answer is still one (empty) text block
            for chunk in st.start({"type": "text", "text": ""}):
                yield chunk
        for chunk in st.stop():
            yield chunk
        reason, sequence = stop_reason(out, parsed, mreq.stop_sequences)
        yield named_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": {"output_tokens": len(out.token_ids)},
            }
        )
        yield named_event({"type": "message_stop"})
    except Exception as e:  # noqa: BLE001 - the status was sent long ago: the client hears about it in-band
        logger.error("message stream failed: %r", e)
        kind = "overloaded_error" if str(e) == ABORTED else "api_error"
        yield named_event({"type": "error", "error": {"type": kind, "message": f"generation failed: {e}"}})
