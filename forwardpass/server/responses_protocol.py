"""OpenAI Responses request bodies, validated and translated into a chat-completions request.

``input`` is a string (one user message) or a list of items: messages (``{"role", "content"}``, with an optional
``"type": "message"``; content a string or ``input_text`` / ``output_text`` parts), ``function_call`` and
``function_call_output`` items (assistant tool calls and their results). ``instructions`` becomes the first
system message; it is not carried over from a previous response (OpenAI's rule). ``text.format`` becomes the
chat request's ``response_format``, ``max_output_tokens`` its ``max_tokens``; function ``tools`` become chat
tools. Unknown fields are ignored; known ones this server cannot honour (``background``, non-function tools,
non-text inputs) are a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import fields
from .errors import invalid, short_repr
from .jsonbody import json_type
from .protocol import MAX_MESSAGES, MAX_USER_CHARS

INPUT_ROLES = frozenset({"user", "system", "developer", "assistant"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
MAX_METADATA_KEYS = 16
MAX_METADATA_CHARS = 512
# chat-completions fields that errors name by their Responses name
RENAME = {"response_format": "text.format", "max_tokens": "max_output_tokens", "messages": "input"}


@dataclass
class ResponsesRequest:
    """What the Responses API needs beyond the chat request it translates into (echoed in the response)."""

    chat_body: dict[str, Any]
    input_messages: list[dict[str, Any]]  # this request's input as chat messages (no instructions)
    instructions: str | None
    previous_response_id: str | None
    store: bool
    stream: bool
    max_output_tokens: int | None
    metadata: dict[str, str]
    tools: list[dict[str, Any]]  # as given (Responses shape), for the response object
    tool_choice: Any
    parallel_tool_calls: bool
    text_format: dict[str, Any]
    user: str | None


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{where}.content must be a string or a list of content parts, got {json_type(content)}", "input")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise invalid(f"{where}.content[{j}] must be an object with a type, got {short_repr(part)}", "input")
        if kind not in TEXT_PARTS:
            raise invalid(
                f"{where}.content[{j}]: parts of type {short_repr(kind)} are not supported (text only)", "input"
            )
        if not isinstance(part.get("text"), str):
            raise invalid(f"{where}.content[{j}] needs a string 'text'", "input")
        texts.append(part["text"])
    return "".join(texts)


def _string_field(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"{where}.{name} must be a non-empty string, got {short_repr(value)}", "input")
    return value


def parse_input(value: Any) -> list[dict[str, Any]]:
    """``input`` as chat messages."""
    if value is None:
        raise invalid("input is required", "input")
    if isinstance(value, str):
        if not value:
            raise invalid("input must not be empty", "input")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid(f"input must be a string or an array of input items, got {json_type(value)}", "input")
    if not value:
        raise invalid("input must not be empty", "input")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"input may hold at most {MAX_MESSAGES} items, got {len(value)}", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{where} must be an object, got {json_type(item)} {short_repr(item)}", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in INPUT_ROLES:
                raise invalid(f"{where}.role must be one of {sorted(INPUT_ROLES)}, got {short_repr(role)}", "input")
            messages.append(
                {"role": "system" if role == "developer" else role, "content": _text_of(item.get("content"), where)}
            )
        elif kind == "function_call":
            call = {
                "id": _string_field(item, "call_id", where),
                "type": "function",
                "function": {
                    "name": _string_field(item, "name", where),
                    "arguments": _arguments(item.get("arguments"), where),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": _string_field(item, "call_id", where),
                    "content": output if isinstance(output, str) else _text_of(output, where),
                }
            )
        elif kind == "reasoning":
            continue  # reasoning items of earlier turns are not shown to the model again
        else:
            raise invalid(
                f"{where}: items of type {short_repr(kind)} are not supported (message, function_call, "
                "function_call_output)",
                "input",
            )
    return messages


def _arguments(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"{where}.arguments must be a string (JSON text), got {json_type(value)}", "input")
    return value


def parse_tools(value: Any) -> list[dict[str, Any]]:
    """Responses function tools (``{"type": "function", "name", "parameters", ...}``) as chat tools."""
    out = []
    for i, tool in enumerate(fields.array(value, "tools")):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else tool
            raise invalid(f"tools[{i}]: only function tools are supported, got {short_repr(kind)}", "tools")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def parse_tool_choice(value: Any) -> Any:
    """``"none" | "auto" | "required" | {"type": "function", "name"}`` as the chat request's tool_choice."""
    if value is None or value in ("none", "auto", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}
    raise invalid(
        f"tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"name\": ...}}, "
        f"got {short_repr(value)}",
        "tool_choice",
    )


def parse_text_format(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``text.format`` as given (default text) and as the chat request's response_format."""
    text = fields.obj(body, "text") or {}
    fmt = text.get("format")
    if fmt is None:
        return {"type": "text"}, None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid("text.format must be an object with a string 'type'", "text.format")
    kind = fmt["type"]
    if kind == "text":
        return fmt, None
    if kind == "json_object":
        return fmt, {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return fmt, {"type": "json_schema", "json_schema": schema}
    raise invalid(
        f"text.format type must be 'text', 'json_object' or 'json_schema', got {short_repr(kind)}", "text.format"
    )


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    value = fields.obj(body, "metadata") or {}
    if len(value) > MAX_METADATA_KEYS or not all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= MAX_METADATA_CHARS
        for k, v in value.items()
    ):
        raise invalid(
            f"metadata must hold at most {MAX_METADATA_KEYS} string values (keys of at most 64 "
            f"characters, values of at most {MAX_METADATA_CHARS})",
            "metadata",
        )
    return dict(value)


def parse_responses_request(body: dict[str, Any], n_ctx: int) -> ResponsesRequest:
    """Validate a /v1/responses body; ``chat_body`` still goes through the chat parser (sampling fields)."""
    messages = parse_input(body.get("input"))
    instructions = fields.string(body, "instructions", 1 << 20)
    max_output = fields.integer(body, "max_output_tokens", None, 1, n_ctx - 1)
    if fields.boolean(body, "background", False):
        raise invalid("background responses are not supported", "background")
    truncation = body.get("truncation")
    if truncation not in (None, "disabled"):
        raise invalid(
            f"truncation must be 'disabled' (an over-long conversation is a 400), got {short_repr(truncation)}",
            "truncation",
        )
    tools, tool_choice = parse_tools(body.get("tools")), parse_tool_choice(body.get("tool_choice"))
    text_format, response_format = parse_text_format(body)
    chat_body: dict[str, Any] = {k: body[k] for k in ("model", "temperature", "top_p", "user", "seed") if k in body}
    chat_body.update(max_tokens=max_output, stream=fields.boolean(body, "stream", False))
    if tools:
        chat_body["tools"] = tools
    if tool_choice is not None:
        chat_body["tool_choice"] = tool_choice
    if response_format is not None:
        chat_body["response_format"] = response_format
    parallel = fields.boolean(body, "parallel_tool_calls", True)
    if "parallel_tool_calls" in body:
        chat_body["parallel_tool_calls"] = parallel
    return ResponsesRequest(
        chat_body=chat_body,
        input_messages=messages,
        instructions=instructions,
        previous_response_id=fields.string(body, "previous_response_id", 256),
        store=fields.boolean(body, "store", True),
        stream=chat_body["stream"],
        max_output_tokens=max_output,
        metadata=_metadata(body),
        tools=body.get("tools") or [],
        tool_choice=body.get("tool_choice") or "auto",
        parallel_tool_calls=parallel,
        text_format=text_format,
        user=fields.string(body, "user", MAX_USER_CHARS),
    )
