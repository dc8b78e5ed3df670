"""Tools, tool calls and tool_choice in OpenAI's shape, validated; the shared vocabulary of the tools package."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import ForwardpassError

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's rule for function names
MAX_TOOLS = 128
EMPTY_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


class ToolError(ForwardpassError, ValueError):
    """A malformed tool definition or tool_choice; ``param`` names the request field."""

    def __init__(self, message: str, param: str = "tools") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    """A function the model may call; ``parameters`` is its arguments' JSON schema."""

    name: str
    description: str
    parameters: dict

    def openai(self) -> dict:
        """The definition as a chat template's ``tools`` variable expects it."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass
class ToolCall:
    """A call the model made: ``arguments`` is JSON text, exactly as generated."""

    name: str
    arguments: str
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_call_id()

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolChoice:
    """``mode`` is none, auto or required; ``name`` is set for a named function (mode required)."""

    mode: str = "auto"
    name: str | None = None


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tools(value: Any) -> list[Tool]:
    """OpenAI's ``tools``: a list of {"type": "function", "function": {"name", "description"?, "parameters"?}}."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ToolError("tools must be an array of tool definitions")
    if len(value) > MAX_TOOLS:
        raise ToolError(f"tools may hold at most {MAX_TOOLS} tools, got {len(value)}")
    tools, seen = [], set()
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise ToolError(f"tools[{i}] must be an object with type 'function'")
        fn = item.get("function")
        if not isinstance(fn, dict):
            raise ToolError(f"tools[{i}].function must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ToolError(
                f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-', got {str(name)[:80]!r}"
            )
        if name in seen:
            raise ToolError(f"tools[{i}]: the function name {name!r} is used twice")
        seen.add(name)
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise ToolError(f"tools[{i}].function.description must be a string")
        parameters = fn.get("parameters")
        if parameters is None:
            parameters = EMPTY_PARAMETERS
        if not isinstance(parameters, dict):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object")
        tools.append(Tool(name, description, parameters))
    return tools


def parse_tool_choice(value: Any, tools: list[Tool]) -> ToolChoice:
    """``tool_choice``: "none", "auto", "required" or {"type": "function", "function": {"name"}}; the default
    is auto with tools and none without (OpenAI's)."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise ToolError(
                f"tool_choice must be 'none', 'auto', 'required' or a named function, got {value[:80]!r}", "tool_choice"
            )
        if value != "none" and not tools:
            raise ToolError(f"tool_choice {value!r} needs tools", "tool_choice")
        return ToolChoice(value)
    fn = value.get("function") if isinstance(value, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise ToolError(
            'tool_choice must name a function as {"type": "function", "function": {"name": ...}}', "tool_choice"
        )
    if name not in {t.name for t in tools}:
        raise ToolError(f"tool_choice names the function {name[:80]!r}, which is not in tools", "tool_choice")
    return ToolChoice("required", name)


def arguments_text(arguments: Any) -> str:
    """A history message's arguments (a JSON string per OpenAI, or already an object) as JSON text."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def arguments_object(arguments: Any) -> Any:
    """Arguments as a value for templates that ``tojson`` them (a string that is not JSON stays a string)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments
