"""OpenAI response bodies: chat and text completions, their stream chunks, usage and logprobs.

Chat logprobs use OpenAI's ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`` form;
completions use the legacy ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` form.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from ..outputs import CompletionOutput, TokenLogprob
from ..tokenizer import Tokenizer
from ..tools import Event, ParsedOutput

MIN_LOGPROB = -9999.0  # what OpenAI reports for a (near) impossible token; -inf is not valid JSON


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``prompt_tokens_details.cached_tokens`` counts prompt tokens read from the prefix
    cache (when known)."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def _logprob(value: float) -> float:
    return max(float(value), MIN_LOGPROB)


class LogprobFormatter:
    """Token texts and bytes for logprobs (control tokens render as empty, as in the content)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def piece(self, token_id: int) -> bytes:
        return self.tokenizer.piece(token_id, skip_special=True)

    def text(self, token_id: int) -> str:
        return self.piece(token_id).decode("utf-8", "replace")

    def chat(self, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        """OpenAI chat form, one entry per token."""

        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            piece = self.piece(token_id)
            return {"token": piece.decode("utf-8", "replace"), "logprob": _logprob(logprob), "bytes": list(piece)}

        return {
            "content": [
                {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in logprobs
            ]
        }

    def legacy(self, logprobs: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
        """Completions' legacy form; ``offset`` is where the first token's text starts in ``text``."""
        tokens, offsets, tops = [], [], []
        for lp in logprobs:
            text = self.text(lp.token_id)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            top: dict[str, float] = {}
            for t, v in lp.top:
                top.setdefault(self.text(t), _logprob(v))
            tops.append(top)
        return {
            "tokens": tokens,
            "token_logprobs": [_logprob(lp.logprob) for lp in logprobs],
            "top_logprobs": tops,
            "text_offset": offsets,
        }


def chat_message(o: CompletionOutput, parse: Callable[[str], ParsedOutput] | None) -> tuple[dict[str, Any], str | None]:
    """The assistant message of one output (content, tool_calls, reasoning_content) and its finish reason:
    ``tool_calls`` when the model called tools and was not cut off."""
    if parse is None:
        return {"role": "assistant", "content": o.text}, o.finish_reason
    parsed = parse(o.text)
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content or (None if parsed.tool_calls else "")}
    if parsed.reasoning is not None:
        message["reasoning_content"] = parsed.reasoning
    finish = o.finish_reason
    if parsed.tool_calls:
        message["tool_calls"] = [c.openai() for c in parsed.tool_calls]
        finish = "tool_calls" if finish == "stop" else finish
    return message, finish


def chat_response(
    rid: str,
    created: int,
    model: str,
    outputs: list[CompletionOutput],
    prompt_tokens: int,
    fmt: LogprobFormatter | None,
    cached_tokens: int | None = None,
    parse: Callable[[str], ParsedOutput] | None = None,
) -> dict[str, Any]:
    choices = []
    for o in outputs:
        message, finish = chat_message(o, parse)
        choices.append(
            {
                "index": o.index,
                "message": message,
                "logprobs": fmt.chat(o.logprobs or []) if fmt is not None else None,
                "finish_reason": finish,
            }
        )
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, sum(len(o.token_ids) for o in outputs), cached_tokens),
    }


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def completion_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_body(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, Any] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def usage_chunk(rid: str, created: int, model: str, obj: str, usage_: dict[str, Any]) -> dict[str, Any]:
    """The final chunk of a stream with ``stream_options.include_usage``: no choices, the usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage_}


def tool_delta(event: Event) -> dict[str, Any]:
    """The chat chunk delta of one parser event (OpenAI's shapes: a call's id and name first, then arguments)."""
    if event.kind == "content":
        return {"content": event.text}
    if event.kind == "reasoning":
        return {"reasoning_content": event.text}
    if event.kind == "call_start":
        return {
            "tool_calls": [
                {
                    "index": event.index,
                    "id": event.id,
                    "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }
            ]
        }
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}
