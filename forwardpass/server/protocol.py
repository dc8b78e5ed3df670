"""The OpenAI request bodies, validated at the edge into dataclasses; JSON goes no further than this module.

Unknown fields are ignored, as OpenAI-compatible servers do. Known fields we cannot honour (``suffix``, a
request-supplied ``chat_template``) are refused with a 400 rather than silently dropped.

Structured output: ``response_format`` (``text``, ``json_object``, ``json_schema`` with ``{"name", "schema",
"strict"}``) or vLLM's ``structured_outputs`` (``json``, ``json_object``, ``regex``, ``choice``, ``grammar``), on
chat and completions. Tools (chat): ``tools``, ``tool_choice``, ``parallel_tool_calls``, and messages carrying
``tool_calls`` (assistant) and ``tool_call_id`` (tool). Errors name the field (``param``); a schema or grammar
that does not compile is a 400 too, found when the route compiles it.

Context fields beyond OpenAI's:

* ``truncate_prompt_tokens`` (vLLM's field; docs/reliability.md, opt-in truncation): keep only the last N prompt tokens
  (after the chat template), or with -1 as many as fit next to ``max_tokens`` (or 1 token when it is omitted). Off by
  default: an over-long prompt is a 400 ``context_length_exceeded``. When given, the response carries ``"truncated":
  true|false`` and ``usage.prompt_tokens`` counts the kept tokens.
* ``n_keep`` / ``n_discard`` (llama.cpp's context-shift fields): forwardpass does no context shift, so
  valid values (``n_keep`` -1..n_ctx, -1 meaning "all", and ``n_discard`` 0..n_ctx) are accepted and have no
  effect; anything else is a 400 naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from ..errors import StructuredOutputError
from ..sampling import SamplingParams
from ..structured.params import StructuredOutputsParams
from ..tools.spec import ToolError, parse_tool_choice, parse_tools
from . import fields
from .errors import invalid, short_repr
from .jsonbody import json_type

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_MESSAGES = 4096
MAX_PROMPTS = 64  # prompts in one batched completions request
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_USER_CHARS = 1024
# chat_template_kwargs a request may pass to the template (docs/reliability.md, template kwargs): switches that
# templates document, nothing that changes how the prompt is framed (add_generation_prompt) or what the renderer
# returns (tokenize).
TEMPLATE_KWARGS = frozenset({"enable_thinking", "thinking", "reasoning_effort"})
MAX_TEMPLATE_VALUE_CHARS = 64

Prompt = Union[str, list[int]]


@dataclass(frozen=True)
class Limits:
    """What validation needs to know about the served model."""

    vocab_size: int
    n_ctx: int


@dataclass
class GenerationRequest:
    """The fields chat and completions share."""

    model: str | None
    params: SamplingParams  # params.max_tokens is the client's explicit limit, or None
    stream: bool
    include_usage: bool
    user: str | None
    truncate_prompt_tokens: int | None  # keep the last N prompt tokens; -1: as many as fit; None: never truncate
    structured: StructuredOutputsParams | None  # from response_format or structured_outputs
    structured_param: str | None  # the field it came from (errors name it)


@dataclass
class ChatRequest(GenerationRequest):
    messages: list[dict[str, Any]]
    template_kwargs: dict[str, Any]
    logprobs: bool
    top_logprobs: int
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True


@dataclass
class CompletionRequest(GenerationRequest):
    prompts: list[Prompt]
    echo: bool
    logprobs: int | None


def _common(
    body: dict[str, Any], limits: Limits, max_tokens_keys: tuple[str, ...], logprobs: int | None
) -> dict[str, Any]:
    """Parse the shared fields into keyword arguments of ``GenerationRequest``."""
    max_tokens = None
    for key in max_tokens_keys:
        max_tokens = fields.integer(body, key, None, 1, limits.n_ctx - 1)
        if max_tokens is not None:
            break
    n = fields.integer(body, "n", 1, 1, MAX_N)
    temperature = fields.number(body, "temperature", 1.0, 0.0, 2.0)
    seed = fields.integer(body, "seed", None, -(2**63), 2**64 - 1)
    params = SamplingParams(
        n=n,
        temperature=temperature,
        top_p=fields.number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=fields.integer(body, "top_k", 0, -1),
        min_p=fields.number(body, "min_p", 0.0, 0.0, 1.0),
        presence_penalty=fields.number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=fields.number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=fields.number(body, "repetition_penalty", 1.0, 0.0, 10.0, lo_open=True),
        logit_bias=fields.logit_bias(body, limits.vocab_size),
        seed=seed,
        stop=fields.stop(body),
        max_tokens=max_tokens,
        ignore_eos=fields.boolean(body, "ignore_eos", False),
        logprobs=logprobs,
    )
    if n > 1 and params.greedy:
        raise invalid("n > 1 needs sampling: with temperature 0 (or top_k 1) every choice would be the same", "n")
    truncate = fields.integer(body, "truncate_prompt_tokens", None, -1, limits.n_ctx - 1)
    if truncate == 0:
        raise invalid(
            "truncate_prompt_tokens must be -1 (as many as fit) or a number of tokens from 1 to "
            f"{limits.n_ctx - 1}, got 0",
            "truncate_prompt_tokens",
        )
    _context_shift_fields(body, limits)
    stream = fields.boolean(body, "stream", False)
    options = fields.obj(body, "stream_options") or {}
    include_usage = fields.boolean(options, "include_usage", False) if stream else False
    structured, structured_param = parse_structured(body)
    return dict(
        model=fields.string(body, "model", 256),
        params=params,
        stream=stream,
        include_usage=include_usage,
        user=fields.string(body, "user", MAX_USER_CHARS),
        truncate_prompt_tokens=truncate,
        structured=structured,
        structured_param=structured_param,
    )


# ---- structured output ----
def _response_format(fmt: Any) -> StructuredOutputsParams | None:
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid("response_format must be an object with a string 'type'", "response_format")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind != "json_schema":
        raise invalid(
            f"response_format type must be text, json_object or json_schema, got {short_repr(kind)}", "response_format"
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid("response_format json_schema needs a 'json_schema' object with a 'schema'", "response_format")
    schema = spec.get("schema")
    if not isinstance(schema, (dict, bool)):
        raise invalid("response_format json_schema.schema must be a JSON schema object", "response_format")
    return StructuredOutputsParams(json=schema)


def parse_structured(body: dict[str, Any]) -> tuple[StructuredOutputsParams | None, str | None]:
    """``response_format`` or ``structured_outputs`` (not both) as one constraint, and the field's name."""
    fmt, so = body.get("response_format"), body.get("structured_outputs")
    if fmt is not None and so is not None:
        raise invalid("give response_format or structured_outputs, not both", "structured_outputs")
    try:
        if fmt is not None:
            return _response_format(fmt), "response_format"
        if so is None:
            return None, None
        if not isinstance(so, dict):
            raise invalid("structured_outputs must be an object", "structured_outputs")
        known = {"json", "json_object", "regex", "choice", "grammar"}
        args = {k: v for k, v in so.items() if k in known and v is not None}
        return StructuredOutputsParams(**args), "structured_outputs"
    except StructuredOutputError as e:
        param = "response_format" if fmt is not None else "structured_outputs"
        raise invalid(
            str(e).replace("structured_outputs.", f"{param}: ", 1) if fmt is not None else str(e), param
        ) from None


def _context_shift_fields(body: dict[str, Any], limits: Limits) -> None:
    """llama.cpp's ``n_keep`` and ``n_discard``: validated (a negative or oversized value once meant memory
    corruption in llama.cpp, CVE-2026-21869), then ignored, as there is no context shift here."""
    for name, lo in (("n_keep", -1), ("n_discard", 0)):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= limits.n_ctx:
            raise invalid(
                f"{name} must be an integer from {lo} to the context size {limits.n_ctx}, got "
                f"{short_repr(value)} (forwardpass does no context shift; valid values are ignored)",
                name,
            )


# ---- chat ----
def _content_text(content: Any, i: int, role: str) -> str:
    """A message's content as text: a string, or a list of text parts (OpenAI's content-part form)."""
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if not isinstance(content, list):
        raise invalid(
            f"messages[{i}].content must be a string or a list of content parts, "
            f"got {json_type(content)} {short_repr(content)}",
            "messages",
        )
    texts = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(
                f"messages[{i}].content parts must be objects with a type, got {short_repr(part)}", "messages"
            )
        if part["type"] != "text":
            raise invalid(
                f"messages[{i}]: content parts of type {short_repr(part['type'])} are not supported (text only)",
                "messages",
            )
        if not isinstance(part.get("text"), str):
            raise invalid(f"messages[{i}]: a text part needs a string 'text'", "messages")
        texts.append(part["text"])
    return "".join(texts)


def parse_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``messages`` as a list of {"role", "content"[, "name"]} dicts with text content."""
    value = fields.array(body.get("messages"), "messages", "messages", MAX_MESSAGES, required=True)
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise invalid(
                f"messages[{i}] must be an object, got {json_type(message)} {short_repr(message)}", "messages"
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"messages[{i}].role must be one of {sorted(ROLES)}, got {short_repr(role)}", "messages")
        item: dict[str, Any] = {"role": role, "content": _content_text(message.get("content"), i, role)}
        if role == "assistant" and message.get("tool_calls") is not None:
            item["tool_calls"] = _tool_calls(message["tool_calls"], i)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is not None and (not isinstance(call_id, str) or len(call_id) > 256):
                raise invalid(f"messages[{i}].tool_call_id must be a string", "messages")
            item["tool_call_id"] = call_id or ""
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str) or len(name) > 256:
                raise invalid(f"messages[{i}].name must be a string of at most 256 characters", "messages")
            item["name"] = name
        out.append(item)
    return out


def _tool_calls(value: Any, i: int) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``: [{"id", "type": "function", "function": {"name", "arguments"}}]."""
    if not isinstance(value, list) or len(value) > 128:
        raise invalid(f"messages[{i}].tool_calls must be an array of at most 128 calls", "messages")
    calls = []
    for call in value:
        fn = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
            or not isinstance(fn.get("arguments", "{}"), (str, dict))
        ):
            raise invalid(
                f'messages[{i}].tool_calls items must be {{"type": "function", "function": {{"name", "arguments"}}}}',
                "messages",
            )
        call_id = call.get("id") or ""
        if not isinstance(call_id, str):
            raise invalid(f"messages[{i}].tool_calls[].id must be a string", "messages")
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": fn["name"], "arguments": fn.get("arguments", "{}")},
            }
        )
    return calls


def _template_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("chat_template") is not None:
        raise invalid(
            "a request-supplied chat_template is not allowed; the model's own template is used", "chat_template"
        )
    value = fields.obj(body, "chat_template_kwargs") or {}
    for key, item in value.items():
        if key not in TEMPLATE_KWARGS:
            raise invalid(
                f"chat_template_kwargs key {short_repr(key)} is not allowed "
                f"(allowed: {', '.join(sorted(TEMPLATE_KWARGS))})",
                "chat_template_kwargs",
            )
        if (
            isinstance(item, str)
            and len(item) > MAX_TEMPLATE_VALUE_CHARS
            or not isinstance(item, (bool, int, float, str))
            or isinstance(item, float)
            and not math.isfinite(item)
        ):
            raise invalid(
                f"chat_template_kwargs[{key!r}] must be a boolean, a number or a short string", "chat_template_kwargs"
            )
    return dict(value)


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``, validated (the route plans the format)."""
    try:
        tools = parse_tools(body.get("tools"))
        parse_tool_choice(body.get("tool_choice"), tools)
    except ToolError as e:
        raise invalid(str(e), e.param) from None
    return dict(
        tools=body.get("tools") or None,
        tool_choice=body.get("tool_choice"),
        parallel_tool_calls=fields.boolean(body, "parallel_tool_calls", True),
    )


def parse_chat_request(body: dict[str, Any], limits: Limits) -> ChatRequest:
    """Validate a /v1/chat/completions body."""
    messages = parse_messages(body)
    tools = _tools(body)
    logprobs = fields.boolean(body, "logprobs", False)
    top = fields.integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs and top > 0:
        raise invalid("top_logprobs needs logprobs set to true", "top_logprobs")
    common = _common(body, limits, ("max_completion_tokens", "max_tokens"), (top or 0) if logprobs else None)
    return ChatRequest(
        **common,
        messages=messages,
        template_kwargs=_template_kwargs(body),
        logprobs=logprobs,
        top_logprobs=top or 0,
        **tools,
    )


# ---- completions ----
def parse_prompts(body: dict[str, Any], vocab_size: int) -> list[Prompt]:
    """``prompt``: a string, a list of token ids, a list of strings, or a list of token-id lists."""
    return fields.prompts(body, "prompt", vocab_size, MAX_PROMPTS)


def parse_completion_request(body: dict[str, Any], limits: Limits) -> CompletionRequest:
    """Validate a /v1/completions body."""
    prompts = parse_prompts(body, limits.vocab_size)
    if body.get("suffix"):
        raise invalid("suffix is not supported", "suffix")
    logprobs = fields.integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    echo = fields.boolean(body, "echo", False)
    if echo and logprobs is not None:
        raise invalid("echo together with logprobs is not supported (no prompt logprobs)", "echo")
    common = _common(body, limits, ("max_tokens",), logprobs)
    return CompletionRequest(**common, prompts=prompts, echo=echo, logprobs=logprobs)
