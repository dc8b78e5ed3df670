"""Anthropic Messages request bodies, validated and translated into a chat-completions request.

``system`` (a string or text blocks) becomes the first system message; ``messages`` (``user`` / ``assistant``,
content a string or blocks) become chat messages: ``text`` blocks join into the content, an assistant's
``tool_use`` blocks become its ``tool_calls`` (``input`` as JSON arguments), a user's ``tool_result`` blocks
become ``role: "tool"`` messages. A final assistant message is a prefill: the answer continues it.
``stop_sequences`` become ``stop``, ``tools`` (``input_schema``) chat tools, ``tool_choice`` (``auto`` / ``any`` /
``tool`` / ``none``) the chat tool_choice, ``output_config.format`` (a JSON schema) the chat response_format.
``max_tokens`` is required. Ranges follow Anthropic's API
(``temperature`` 0..1). Unknown fields are ignored; known ones this server cannot honour (images, documents,
server tools) are a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import fields
from .agent_common import arguments_json
from .errors import invalid, short_repr
from .jsonbody import json_type
from .protocol import MAX_MESSAGES, MAX_USER_CHARS

MAX_TOKENS_LIMIT = 2**31 - 1
SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # earlier turns' reasoning: not shown again
RENAME = {"stop": "stop_sequences", "response_format": "output_config.format"}


@dataclass
class MessagesRequest:
    chat_body: dict[str, Any]  # messages (system first, without the prefill), sampling fields, tools
    prefill: str  # the text of a final assistant message, which the answer continues
    max_tokens: int | None  # None for count_tokens
    stop_sequences: tuple[str, ...]
    stream: bool


def _block_text(block: dict[str, Any], where: str) -> str:
    if not isinstance(block.get("text"), str):
        raise invalid(f"{where} needs a string 'text'", "messages")
    return block["text"]


def parse_system(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if not isinstance(value, list):
        raise invalid(f"system must be a string or a list of text blocks, got {json_type(value)}", "system")
    texts = []
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise invalid(
                f'system[{i}] must be a text block {{"type": "text", "text": ...}}, got {short_repr(block)}', "system"
            )
        texts.append(block["text"])
    return "\n\n".join(texts) or None


def _tool_result_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise invalid(f"{where}.content must be a string or a list of text blocks", "messages")
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid(f"{where}.content[{j}]: only text blocks are supported in a tool result", "messages")
        texts.append(_block_text(block, f"{where}.content[{j}]"))
    return "".join(texts)


def _message(message: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages (a user turn with tool results becomes tool messages first)."""
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise invalid(f"{where} must be an object, got {json_type(message)} {short_repr(message)}", "messages")
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant"):
        raise invalid(
            f"{where}.role must be 'user' or 'assistant' (system goes in the top-level 'system'), got "
            f"{short_repr(role)}",
            "messages",
        )
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid(
            f"{where}.content must be a string or a list of content blocks, got {json_type(content)}", "messages"
        )
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_block_text(block, at))
        elif kind == "tool_use" and role == "assistant":
            if (
                not isinstance(block.get("id"), str)
                or not isinstance(block.get("name"), str)
                or not isinstance(block.get("input"), dict)
            ):
                raise invalid(f"{at}: a tool_use block needs a string id and name and an object input", "messages")
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments_json(block["input"])},
                }
            )
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise invalid(f"{at}: a tool_result block needs a string tool_use_id", "messages")
            text = _tool_result_text(block.get("content"), at)
            if block.get("is_error") is True:
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in SKIPPED_BLOCKS:
            continue
        else:
            raise invalid(
                f"{at}: blocks of type {short_repr(kind)} are not supported in a {role} message "
                f"(text{', tool_use' if role == 'assistant' else ', tool_result'})",
                "messages",
            )
    out = list(results)
    if calls:
        out.append({"role": role, "content": "".join(texts) or None, "tool_calls": calls})
    elif texts or not results:
        out.append({"role": role, "content": "".join(texts)})
    return out


def parse_messages(value: Any) -> list[dict[str, Any]]:
    value = fields.array(value, "messages", "messages", MAX_MESSAGES, required=True)
    return [m for i, message in enumerate(value) for m in _message(message, i)]


def parse_tools(value: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(fields.array(value, "tools")):
        if not isinstance(tool, dict):
            raise invalid(f"tools[{i}] must be an object, got {short_repr(tool)}", "tools")
        if tool.get("type") not in (None, "custom"):
            raise invalid(
                f"tools[{i}]: server tools ({short_repr(tool.get('type'))}) are not supported; only "
                "client tools with an input_schema",
                "tools",
            )
        if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
            raise invalid(f"tools[{i}] needs a string name and an object input_schema", "tools")
        fn = {"name": tool["name"], "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def parse_tool_choice(value: Any) -> tuple[Any, bool | None]:
    """(the chat tool_choice, parallel_tool_calls) for Anthropic's tool_choice."""
    if value is None:
        return None, None
    kind = value.get("type") if isinstance(value, dict) else None
    choice: Any
    if kind in ("auto", "none"):
        choice = kind
    elif kind == "any":
        choice = "required"
    elif kind == "tool" and isinstance(value.get("name"), str):
        choice = {"type": "function", "function": {"name": value["name"]}}
    else:
        raise invalid(
            f'tool_choice must be {{"type": "auto" | "any" | "none"}} or {{"type": "tool", '
            f'"name": ...}}, got {short_repr(value)}',
            "tool_choice",
        )
    disable = fields.boolean(value, "disable_parallel_tool_use", False)
    return choice, (False if disable else None)


def parse_output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """``output_config.format`` (``{"type": "json_schema", "schema"}``) as the chat request's response_format."""
    config = fields.obj(body, "output_config") or {}
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise invalid('output_config.format must be {"type": "json_schema", "schema": {...}}', "output_config.format")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def parse_messages_request(body: dict[str, Any], count_only: bool = False) -> MessagesRequest:
    """Validate a /v1/messages body (``count_only``: a /v1/messages/count_tokens body, without max_tokens)."""
    messages = parse_messages(body.get("messages"))
    system = parse_system(body.get("system"))
    max_tokens = None
    if not count_only:
        if body.get("max_tokens") is None:
            raise invalid("max_tokens is required", "max_tokens")
        max_tokens = fields.integer(body, "max_tokens", None, 1, MAX_TOKENS_LIMIT)
    if body.get("model") is None:
        raise invalid("model is required", "model")
    prefill = ""
    last = messages[-1]
    if last["role"] == "assistant" and not last.get("tool_calls"):
        prefill = last["content"]
        messages = messages[:-1]
        if not messages:
            raise invalid("messages must hold a user message before a final assistant message", "messages")
    stops = fields.array(body.get("stop_sequences"), "stop_sequences", "strings") or None
    metadata = fields.obj(body, "metadata") or {}
    chat_body: dict[str, Any] = {
        "model": fields.string(body, "model", 256),
        "messages": ([{"role": "system", "content": system}] if system else []) + messages,
        "temperature": fields.number(body, "temperature", 1.0, 0.0, 1.0),
        "top_p": fields.number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "top_k": fields.integer(body, "top_k", 0, 0),
        "stop": stops,
        "user": fields.string(metadata, "user_id", MAX_USER_CHARS),
    }
    tools = parse_tools(body.get("tools"))
    choice, parallel = parse_tool_choice(body.get("tool_choice"))
    if tools:
        chat_body["tools"] = tools
    if choice is not None:
        chat_body["tool_choice"] = choice
    if parallel is not None:
        chat_body["parallel_tool_calls"] = parallel
    response_format = parse_output_format(body)
    if response_format is not None:
        chat_body["response_format"] = response_format
    stream = fields.boolean(body, "stream", False)
    chat_body["stream"] = stream
    return MessagesRequest(chat_body, prefill, max_tokens, tuple(stops or ()), stream)
