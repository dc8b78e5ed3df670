"""Tool-call formats: which one a chat template speaks, how messages and tools become its prompt, and the
grammar that keeps the model to it.

- ``hermes``: Hermes / Qwen 2.5 / Qwen 3, ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.
- ``llama3``: Llama 3.1-3.3 JSON calls, ``{"name": ..., "parameters": {...}}`` (or after ``<|python_tag|>``).
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``.
- ``generic``: templates that know nothing of tools (SmolLM2, Gemma 3): the tools are described in a system
  message and the whole reply is a JSON envelope, ``{"tool_calls": [...]}`` or ``{"content": "..."}``.

Constraints (llguidance Lark with inline ``%json`` schemas): ``required`` and a named function are fully
constrained to the declared tools' parameter schemas; ``auto`` leaves text free until the call's opening
marker, then constrains the call (the generic format's ``auto`` is the envelope with either branch); ``none``
is unconstrained.
"""

from __future__ import annotations

import json
from typing import Any

from ..structured.params import JSON_OPTIONS, StructuredOutputsParams, tightened
from .parser import CallSyntax
from .spec import Tool, ToolChoice, arguments_object, arguments_text


def _call_schema(tool: Tool, args_key: str) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, args_key: tightened(tool.parameters)},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def _chosen(tools: list[Tool], choice: ToolChoice) -> list[Tool]:
    return [t for t in tools if t.name == choice.name] if choice.name else tools


def _calls_schema(tools: list[Tool], args_key: str) -> dict:
    """One call of any of ``tools`` (a single schema when there is one)."""
    calls = [_call_schema(t, args_key) for t in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def _inline(schema: dict) -> str:
    """A Lark ``%json`` body with the compact separators."""
    return "%json " + json.dumps({"x-guidance": JSON_OPTIONS, **schema}, ensure_ascii=False)


def _lark(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a Lark string literal


class ToolFormat:
    """How one family of chat templates does tools; subclasses fill in the syntax and the grammar."""

    name = "base"
    syntax = CallSyntax()
    native = True  # the template renders tools and tool calls itself

    def render_messages(self, messages: list[dict], tools: list[Tool], choice: ToolChoice) -> tuple[list[dict], Any]:
        """(messages, tools) as the template's variables: tool-call arguments as objects (the templates
        ``tojson`` them) and the tools in OpenAI's shape (None when there are none)."""
        out = []
        for m in messages:
            if m.get("role") == "assistant" and m.get("tool_calls"):
                calls = [
                    {
                        "id": c.get("id"),
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": arguments_object(c["function"].get("arguments", {})),
                        },
                    }
                    for c in m["tool_calls"]
                ]
                m = {**m, "tool_calls": calls, "content": m.get("content") or ""}
            out.append(m)
        return out, ([t.openai() for t in tools] if tools and choice.mode != "none" else None)

    def constraint(self, tools: list[Tool], choice: ToolChoice, parallel: bool) -> StructuredOutputsParams | None:
        if choice.mode == "none" or not tools:
            return None
        return StructuredOutputsParams(
            grammar=self.grammar(_chosen(tools, choice), choice.mode == "auto", parallel and not choice.name)
        )

    def grammar(self, tools: list[Tool], auto: bool, parallel: bool) -> str:
        raise NotImplementedError


class HermesFormat(ToolFormat):
    """Qwen 2.5 (the Coder models especially) also answers a call as a bare JSON object, without the tags:
    in ``auto`` a reply that starts with ``{`` is taken as (and constrained to) a call."""

    name = "hermes"
    syntax = CallSyntax(start="<tool_call>", end="</tool_call>", bare_json=True)

    def grammar(self, tools: list[Tool], auto: bool, parallel: bool) -> str:
        calls = 'call ("\\n" call)*' if parallel else "call"
        body = f"body: {_inline(_calls_schema(tools, 'arguments'))}\n"
        if auto:  # free text until "<tool_call>" appears, then the call(s)
            more = ' ("\\n" call)*' if parallel else ""
            return (
                f"start: TEXT | head body_end{more} | body\n"
                + "TEXT: /[^{](.|\\n)*/\nhead[lazy]: /([^{](.|\\n)*)?<tool_call>/\n"
                'body_end: "\\n" body "\\n</tool_call>"\n'
                'call: "<tool_call>\\n" body "\\n</tool_call>"\n' + body
            )
        return f'start: {calls}\ncall: "<tool_call>\\n" body "\\n</tool_call>"\n' + body


class Llama3Format(ToolFormat):
    name = "llama3"
    syntax = CallSyntax(start="<|python_tag|>", bare_json=True, args_key="parameters")

    def grammar(self, tools: list[Tool], auto: bool, parallel: bool) -> str:
        body = f"call: {_inline(_calls_schema(tools, 'parameters'))}\n"
        # Llama 3 makes one call per turn; text in auto mode must not start with "{" (that is a call)
        return ("start: TEXT | call\nTEXT: /[^{](.|\\n)*/\n" if auto else "start: call\n") + body


class MistralFormat(ToolFormat):
    name = "mistral"
    syntax = CallSyntax(start="[TOOL_CALLS]", array=True)

    def grammar(self, tools: list[Tool], auto: bool, parallel: bool) -> str:
        array = {"type": "array", "items": _calls_schema(tools, "arguments"), "minItems": 1}
        if not parallel:
            array["maxItems"] = 1
        calls = f"calls: {_lark('[TOOL_CALLS]')} {_inline(array)}\n"
        return ("start: TEXT | calls\nTEXT: /[^\\[](.|\\n)*/\n" if auto else "start: calls\n") + calls


class GenericFormat(ToolFormat):
    """For templates without tools: a system message explains the tools and the JSON reply."""

    name = "generic"
    syntax = CallSyntax(envelope=True)
    native = False

    def render_messages(self, messages: list[dict], tools: list[Tool], choice: ToolChoice) -> tuple[list[dict], Any]:
        names: dict[str, str] = {}
        out: list[dict] = []
        for m in messages:
            role = m.get("role")
            if role == "assistant" and m.get("tool_calls"):
                calls = []
                for c in m["tool_calls"]:
                    fn = c["function"]
                    names[c.get("id") or ""] = fn["name"]
                    calls.append({"name": fn["name"], "arguments": arguments_object(fn.get("arguments", {}))})
                out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)})
            elif role == "tool":
                name = m.get("name") or names.get(m.get("tool_call_id") or "", "the tool")
                text = f"Result of {name}: {m.get('content', '')}"
                if out and out[-1].get("_tool_results"):  # consecutive results share one user turn
                    out[-1]["content"] += "\n" + text
                else:
                    out.append({"role": "user", "content": text, "_tool_results": True})
            else:
                out.append({k: v for k, v in m.items() if k in ("role", "content", "name")})
        for m in out:
            m.pop("_tool_results", None)
        if tools and choice.mode != "none":
            out = self._with_system(out, self.instructions(tools, choice))
        return out, None

    @staticmethod
    def instructions(tools: list[Tool], choice: ToolChoice) -> str:
        defs = json.dumps(
            [
                {"name": t.name, "description": t.description, "parameters": t.parameters}
                for t in _chosen(tools, choice)
            ],
            ensure_ascii=False,
        )
        call = '{"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}]}'
        if choice.mode == "auto":
            how = (
                f"To call functions, reply with only this JSON: {call}. To answer directly, reply with only "
                '{"content": "<your answer>"}.'
            )
        elif choice.name:
            how = f"Call the function {choice.name}: reply with only this JSON: {call}."
        else:
            how = f"Call one or more of these functions: reply with only this JSON: {call}."
        return f"You can call these functions (their arguments are described by JSON Schema):\n{defs}\n{how}"

    @staticmethod
    def _with_system(messages: list[dict], text: str) -> list[dict]:
        if messages and messages[0].get("role") == "system":
            return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
        return [{"role": "system", "content": text}, *messages]

    def constraint(self, tools: list[Tool], choice: ToolChoice, parallel: bool) -> StructuredOutputsParams | None:
        if choice.mode == "none" or not tools:
            return None
        calls = {"type": "array", "items": _calls_schema(_chosen(tools, choice), "arguments"), "minItems": 1}
        if not parallel or choice.name:
            calls["maxItems"] = 1
        envelope = {
            "type": "object",
            "properties": {"tool_calls": calls},
            "required": ["tool_calls"],
            "additionalProperties": False,
        }
        if choice.mode == "auto":
            text = {
                "type": "object",
                "properties": {"content": {"type": "string"}},
                "required": ["content"],
                "additionalProperties": False,
            }
            envelope = {"anyOf": [envelope, text]}
        return StructuredOutputsParams(json=envelope)


FORMATS = {f.name: f for f in (HermesFormat(), Llama3Format(), MistralFormat(), GenericFormat())}


def detect_format(template_source: str | None) -> ToolFormat:
    """The tool format a chat template speaks, from its source; ``generic`` when it has no tool support."""
    src = template_source or ""
    if "tools" not in src and "tool_calls" not in src:
        return FORMATS["generic"]
    if "<tool_call>" in src:
        return FORMATS["hermes"]
    if "[TOOL_CALLS]" in src:
        return FORMATS["mistral"]
    if "<|python_tag|>" in src or ("<|start_header_id|>" in src and '"parameters"' in src):
        return FORMATS["llama3"]
    return FORMATS["generic"]


def uses_reasoning(template_source: str | None) -> bool:
    """Whether the template's replies carry ``<think>...</think>`` (Qwen 3, DeepSeek R1 distills)."""
    return "</think>" in (template_source or "")


__all__ = [
    "FORMATS",
    "GenericFormat",
    "HermesFormat",
    "Llama3Format",
    "MistralFormat",
    "ToolFormat",
    "detect_format",
    "uses_reasoning",
    "arguments_text",
]
