"""The SSE event sequences of streamed chat and text completions.

Every sample (prompt i, choice k) has a cursor over its cumulative output: each update sends only the new text
(and the logprobs of the new tokens), then one chunk with the finish reason. When truncation was asked for,
the finish chunks and the usage chunk carry ``"truncated"``. Engine failures become an error
event (the HTTP status was sent long ago), and the stream still ends with ``data: [DONE]``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..engine.async_engine import ReplicaLostError
from ..outputs import CompletionOutput
from ..tools import OutputParser
from . import responses as R
from .generation import RequestGroup
from .sse import DONE, event

logger = logging.getLogger(__name__)


@dataclass
class StreamInfo:
    """What every chunk of one stream repeats, and the options that shape it."""

    rid: str
    created: int
    model: str
    include_usage: bool
    fmt: R.LogprobFormatter | None  # set when logprobs were asked for
    prompt_tokens: int
    truncated: bool | None = None  # reported when the request asked for truncate_prompt_tokens
    parser: Callable[[], OutputParser] | None = None  # chat with tools or reasoning: a parser per choice

    def final(self, chunk: dict[str, Any]) -> bytes:
        """A finish or usage chunk, with ``truncated`` when it is to be reported."""
        if self.truncated is not None:
            chunk["truncated"] = self.truncated
        return event(chunk)


@dataclass
class _Cursor:
    chars: int = 0
    tokens: int = 0
    finished: bool = False


def _error_event(e: BaseException) -> bytes:
    logger.error("stream failed: %r", e)
    if isinstance(e, ReplicaLostError):  # the replica died mid-stream: a 503 the client may retry
        return event({"error": {"message": str(e), "type": "unavailable_error", "param": None, "code": 503}})
    return event(
        {"error": {"message": f"generation failed: {e}", "type": "server_error", "param": None, "code": "engine_error"}}
    )


async def _follow(group: RequestGroup) -> AsyncIterator[list[tuple[int, CompletionOutput, _Cursor]]]:
    """Per update: (prompt index, output, its cursor) of every sample, until all have finished."""
    cursors: dict[tuple[int, int], _Cursor] = {}
    while True:
        outs = await group.next_update()
        batch = []
        for i, request_out in enumerate(outs):
            for o in request_out.outputs:
                batch.append((i, o, cursors.setdefault((i, o.index), _Cursor())))
        yield batch
        if all(c.finished for _, _, c in batch):
            return


def _usage_event(group: RequestGroup, info: StreamInfo, object_: str, completion_tokens: int) -> bytes:
    """The last chunk before [DONE] when the client asked for usage."""
    cached = sum(out.num_cached_tokens for out in group.latest if out is not None)
    return info.final(
        R.usage_chunk(
            info.rid, info.created, info.model, object_, R.usage(info.prompt_tokens, completion_tokens, cached)
        )
    )


def _new_tokens(o: CompletionOutput, c: _Cursor) -> tuple[str, list]:
    text, logprobs = o.text[c.chars :], (o.logprobs or [])[c.tokens :]
    c.chars, c.tokens = len(o.text), len(o.token_ids)
    return text, logprobs


async def chat_events(group: RequestGroup, info: StreamInfo) -> AsyncIterator[bytes]:
    """role chunk per choice, content deltas, a finish chunk per choice, [usage], [DONE]."""
    chunk = lambda index, delta, finish=None, lp=None: event(  # noqa: E731
        R.chat_chunk(info.rid, info.created, info.model, index, delta, finish, lp)
    )
    for k in range(group.params.n):
        yield chunk(k, {"role": "assistant", "content": ""})
    completion_tokens = 0
    parsers = {k: info.parser() for k in range(group.params.n)} if info.parser is not None else {}
    try:
        async for batch in _follow(group):
            for _, o, c in batch:
                if c.finished:
                    continue
                text, lps = _new_tokens(o, c)
                lp = info.fmt.chat(lps) if info.fmt is not None else None
                if o.index in parsers:
                    parser = parsers[o.index]
                    events = parser.feed(text) + (parser.finish() if o.finished else [])
                    deltas = [R.tool_delta(e) for e in events] or ([{"content": ""}] if lps and lp is not None else [])
                    for i, delta in enumerate(deltas):
                        yield chunk(o.index, delta, None, lp if i == 0 else None)
                elif text or (info.fmt is not None and lps):
                    yield chunk(o.index, {"content": text}, None, lp)
                if o.finished:
                    c.finished = True
                    completion_tokens += len(o.token_ids)
                    finish = o.finish_reason
                    if o.index in parsers and parsers[o.index].result().tool_calls and finish == "stop":
                        finish = "tool_calls"
                    yield info.final(R.chat_chunk(info.rid, info.created, info.model, o.index, {}, finish))
        if info.include_usage:
            yield _usage_event(group, info, "chat.completion.chunk", completion_tokens)
    except Exception as e:  # noqa: BLE001 - the client hears about it in-band
        yield _error_event(e)
    yield DONE


async def completion_events(
    group: RequestGroup, info: StreamInfo, echo: Callable[[int], str] | None
) -> AsyncIterator[bytes]:
    """Text deltas per choice (index = prompt * n + choice), finish chunks, [usage], [DONE]."""
    n = group.params.n

    def chunk(index: int, text: str, finish: str | None, lp: dict[str, Any] | None) -> bytes:
        body = R.completion_body(
            info.rid, info.created, info.model, [R.completion_choice(index, text, finish, lp)], None
        )
        return info.final(body) if finish is not None else event(body)

    completion_tokens = 0
    offsets: dict[int, int] = {}
    try:
        async for batch in _follow(group):
            for i, o, c in batch:
                if c.finished:
                    continue
                index = i * n + o.index
                prefix = ""
                if index not in offsets:
                    prefix = echo(i) if echo is not None else ""
                    offsets[index] = len(prefix)
                text, lps = _new_tokens(o, c)
                text = prefix + text
                lp = info.fmt.legacy(lps, offsets[index]) if info.fmt is not None else None
                offsets[index] += len(text) - len(prefix)
                if text or (lp is not None and lps):
                    yield chunk(index, text, None, lp)
                if o.finished:
                    c.finished = True
                    completion_tokens += len(o.token_ids)
                    yield chunk(index, "", o.finish_reason, None)
        if info.include_usage:
            yield _usage_event(group, info, "text_completion", completion_tokens)
    except Exception as e:  # noqa: BLE001
        yield _error_event(e)
    yield DONE
