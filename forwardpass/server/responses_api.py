"""POST /v1/responses (OpenAI's Responses API), GET and DELETE /v1/responses/{id}.

A request becomes a chat completion (``responses_protocol``) and runs like one. The answer is a response object
whose ``output`` holds a ``message`` item (``output_text`` content) and any ``function_call`` items; ``status``
is ``completed``, ``incomplete`` (``max_output_tokens`` reached) or ``failed``. A stream sends the typed events
in order: ``response.created``, ``response.in_progress``, per item ``response.output_item.added``, (message)
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, (function call) ``response.function_call_arguments.delta``...,
``response.function_call_arguments.done``, then ``response.output_item.done``, and last
``response.completed`` / ``response.incomplete`` / ``response.failed``; every event has a ``sequence_number``.

``store`` (default true) keeps the response and its conversation in a bounded in-memory store (least recently
used first out, at most ``MAX_STORED`` responses and ``MAX_STORED_CHARS`` characters), so a later request can
continue it with ``previous_response_id``; an unknown id is a 400 ``previous_response_not_found``.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..outputs import CompletionOutput, RequestOutput
from . import tool_seam
from .agent_common import cached_tokens, chat_request, follow, generate_chat, named_event
from .errors import APIError, invalid
from .generation import RequestGroup
from .openai_routes import check_model, read_json
from .protocol import ChatRequest
from .responses_protocol import RENAME, ResponsesRequest, parse_responses_request
from .state import ServerState

logger = logging.getLogger(__name__)

MAX_STORED = 1000
MAX_STORED_CHARS = 64 * 1024 * 1024


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class StoredResponse:
    response: dict[str, Any]
    messages: list[dict[str, Any]]  # the conversation up to and including this response's output (chat shape)
    chars: int


class ResponseStore:
    """Stored responses, least recently used evicted first, bounded in count and in characters."""

    def __init__(self, max_entries: int = MAX_STORED, max_chars: int = MAX_STORED_CHARS) -> None:
        self.max_entries, self.max_chars = max_entries, max_chars
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self.chars = 0

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        chars = len(json.dumps(response)) + len(json.dumps(messages))
        if chars > self.max_chars:
            logger.warning("response %s is too large to store (%d characters)", response["id"], chars)
            return
        self._entries[response["id"]] = StoredResponse(response, messages, chars)
        self.chars += chars
        while len(self._entries) > self.max_entries or self.chars > self.max_chars:
            _, old = self._entries.popitem(last=False)
            self.chars -= old.chars

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.chars -= entry.chars
        return entry is not None

    def __len__(self) -> int:
        return len(self._entries)


class ResponseBuilder:
    """The response object and its output items, for one request."""

    def __init__(self, rid: str, model: str, rreq: ResponsesRequest, req: ChatRequest) -> None:
        self.rid, self.model, self.rreq, self.req = rid, model, rreq, req
        self.created = int(time.time())
        self.msg_id = _id("msg")

    def envelope(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        r, p = self.rreq, self.req.params
        text = "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "model": self.model,
            "output": output,
            "output_text": text,
            "parallel_tool_calls": r.parallel_tool_calls,
            "previous_response_id": r.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": r.store,
            "temperature": p.temperature,
            "text": {"format": r.text_format},
            "tool_choice": r.tool_choice,
            "tools": r.tools,
            "top_p": p.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": r.user,
            "metadata": r.metadata,
        }

    def message_item(self, text: str, status: str) -> dict[str, Any]:
        content = (
            [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
            if status != "in_progress"
            else []
        )
        return {"id": self.msg_id, "type": "message", "status": status, "role": "assistant", "content": content}

    @staticmethod
    def call_item(call: tool_seam.ToolCall, item_id: str, arguments: str, status: str) -> dict[str, Any]:
        return {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "call_id": call.id,
            "name": call.name,
            "arguments": arguments,
        }

    def final(
        self, items: list[dict[str, Any]], out: CompletionOutput, prompt_tokens: int, cached: int
    ) -> dict[str, Any]:
        n_out = len(out.token_ids)
        usage = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": n_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + n_out,
        }
        if out.finish_reason == "abort":
            return self.envelope(
                "failed",
                items,
                usage,
                {"code": "server_error", "message": "the request was aborted (the server is shutting down)"},
            )
        if out.finish_reason == "length":
            return self.envelope("incomplete", items, usage, incomplete={"reason": "max_output_tokens"})
        return self.envelope("completed", items, usage)

    def items(self, parsed: tool_seam.ParsedOutput, item_status: str) -> list[dict[str, Any]]:
        """Non-streamed output: the message (unless the answer is only tool calls), then the calls."""
        items = [self.message_item(parsed.text, item_status)] if parsed.text or not parsed.tool_calls else []
        return items + [self.call_item(c, _id("fc"), c.arguments, "completed") for c in parsed.tool_calls]


def conversation_after(messages: list[dict[str, Any]], response: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored conversation: the input messages, then the response's output as one assistant turn."""
    text = response["output_text"]
    calls = [
        {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
        for item in response["output"]
        if item["type"] == "function_call"
    ]
    turn: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        turn["tool_calls"] = calls
    return [*messages, turn]


async def create_response(request: Request) -> Response:
    state: ServerState = request.app.state.server
    state.check_accepting()
    assert state.llm is not None and state.limits is not None
    rreq = parse_responses_request(await read_json(request), state.limits.n_ctx)
    store: ResponseStore = request.app.state.response_store
    history: list[dict[str, Any]] = []
    if rreq.previous_response_id is not None:
        entry = store.get(rreq.previous_response_id)
        if entry is None:
            raise APIError(
                400,
                f"Previous response with id {rreq.previous_response_id!r} not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = entry.messages
    conversation = history + rreq.input_messages
    system = [{"role": "system", "content": rreq.instructions}] if rreq.instructions else []
    req = chat_request({**rreq.chat_body, "messages": system + conversation}, state.limits, RENAME)
    check_model(req.model, state)
    if state.llm.chat_template is None:
        raise invalid("this model has no chat template; use /v1/completions", "input")
    builder = ResponseBuilder(_id("resp"), state.model_name, rreq, req)
    session = tool_seam.ToolSession(state, req, RENAME)

    def save(response: dict[str, Any]) -> None:
        if rreq.store and response["status"] in ("completed", "incomplete"):
            store.put(response, conversation_after(conversation, response))

    def body_fn(outputs: list[RequestOutput], prompts: list[list[int]], truncated: list[bool]) -> dict[str, Any]:
        out = outputs[0].outputs[0]
        _, parsed = session.parser().finish(out.text)
        status = "incomplete" if out.finish_reason == "length" else "completed"
        response = builder.final(builder.items(parsed, status), out, len(prompts[0]), outputs[0].num_cached_tokens)
        save(response)
        return response

    def stream_fn(group: RequestGroup, prompts: list[list[int]], truncated: list[bool]) -> AsyncIterator[bytes]:
        return response_events(group, builder, session.parser(), len(prompts[0]), save)

    return await generate_chat(request, req, session, builder.rid, "input", stream_fn, body_fn)


class _ResponseStream:
    """The events of one streamed response; each item is closed before the next one opens."""

    def __init__(self, b: ResponseBuilder) -> None:
        self.b = b
        self._seq = itertools.count()
        self.items: list[dict[str, Any]] = []  # in the order they were opened
        self.text: list[str] = []
        self.message: int | None = None  # the open message item's output index
        self.call: tuple[int, tool_seam.ToolCall, str, list[str]] | None = None  # (index, call, item id, args)

    def ev(self, type_: str, **data: Any) -> bytes:
        return named_event({"type": type_, "sequence_number": next(self._seq), **data})

    def part_ev(self, type_: str, index: int, **data: Any) -> bytes:
        """An event of the text part (the only content part) of the message item at output index `index`."""
        return self.ev(type_, item_id=self.b.msg_id, output_index=index, content_index=0, **data)

    def on(self, e: tool_seam.StreamEvent) -> list[bytes]:
        b, out = self.b, []
        if e.kind == "text":
            if self.message is None:
                out += self.close_call("completed")
                self.message = len(self.items)
                self.items.append(b.message_item("", "in_progress"))
                out.append(self.ev("response.output_item.added", output_index=self.message, item=self.items[-1]))
                part = {"type": "output_text", "text": "", "annotations": []}
                out.append(self.part_ev("response.content_part.added", self.message, part=part))
            if e.text:
                self.text.append(e.text)
                out.append(self.part_ev("response.output_text.delta", self.message, delta=e.text, logprobs=[]))
        elif e.kind == "call_start":
            assert e.call is not None
            out += self.close_message("completed") + self.close_call("completed")
            self.call = (len(self.items), e.call, _id("fc"), [])
            self.items.append(b.call_item(e.call, self.call[2], "", "in_progress"))
            out.append(self.ev("response.output_item.added", output_index=self.call[0], item=self.items[-1]))
        else:
            assert self.call is not None
            index, _, item_id, args = self.call
            args.append(e.text)
            out.append(
                self.ev("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=e.text)
            )
        return out

    def close_message(self, status: str) -> list[bytes]:
        if self.message is None:
            return []
        b, index, whole = self.b, self.message, "".join(self.text)
        self.message = None
        part = {"type": "output_text", "text": whole, "annotations": [], "logprobs": []}
        self.items[index] = b.message_item(whole, status)
        return [
            self.part_ev("response.output_text.done", index, text=whole, logprobs=[]),
            self.part_ev("response.content_part.done", index, part=part),
            self.ev("response.output_item.done", output_index=index, item=self.items[index]),
        ]

    def close_call(self, status: str) -> list[bytes]:
        if self.call is None:
            return []
        index, call, item_id, args = self.call
        self.call = None
        arguments = "".join(args)
        self.items[index] = self.b.call_item(call, item_id, arguments, status)
        return [
            self.ev(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=call.name,
                arguments=arguments,
            ),
            self.ev("response.output_item.done", output_index=index, item=self.items[index]),
        ]


async def response_events(
    group: RequestGroup,
    b: ResponseBuilder,
    parser: tool_seam.OutputParser,
    prompt_tokens: int,
    save: Callable[[dict[str, Any]], None],
) -> AsyncIterator[bytes]:
    st = _ResponseStream(b)
    yield st.ev("response.created", response=b.envelope("in_progress", []))
    yield st.ev("response.in_progress", response=b.envelope("in_progress", []))
    try:
        out: CompletionOutput | None = None
        async for out in follow(group):
            for e in parser.feed(out.text) if not out.finished else parser.finish(out.text)[0]:
                for chunk in st.on(e):
                    yield chunk
        assert out is not None
        if not st.items:  # an empty answer is still one (empty) message
            for chunk in st.on(tool_seam.StreamEvent("text", "")):
                yield chunk
        status = "incomplete" if out.finish_reason == "length" else "completed"
        for chunk in st.close_message(status) + st.close_call(status):
            yield chunk
        final = b.final(st.items, out, prompt_tokens, cached_tokens(group))
        save(final)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            final["status"], "response.failed"
        )
        yield st.ev(kind, response=final)
    except Exception as e:  # noqa: BLE001 - the status was sent long ago: the client hears about it in-band
        logger.error("response stream failed: %r", e)
        yield st.ev(
            "response.failed",
            response=b.envelope(
                "failed", st.items, error={"code": "server_error", "message": f"generation failed: {e}"}
            ),
        )


def _not_found(response_id: str) -> APIError:
    return APIError(
        404,
        f"Response with id {response_id[:100]!r} not found.",
        type="invalid_request_error",
        param="response_id",
        code="not_found",
    )


async def get_response(request: Request) -> Response:
    store: ResponseStore = request.app.state.response_store
    response_id = request.path_params["response_id"]
    entry = store.get(response_id)
    if entry is None:
        raise _not_found(response_id)
    return JSONResponse(entry.response)


async def delete_response(request: Request) -> Response:
    store: ResponseStore = request.app.state.response_store
    response_id = request.path_params["response_id"]
    if not store.delete(response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
