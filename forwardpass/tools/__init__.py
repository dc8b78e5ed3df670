"""Tool calling for any chat template: the API the chat routes (and the Responses / Messages APIs) build on.

    plan = plan_tools(template.source, tools=raw_tools, tool_choice="auto", parallel_tool_calls=True)
    prompt = plan.render(template, messages, **template_kwargs)     # messages + tools -> prompt text
    params = replace(params, structured_outputs=plan.constraint())   # the grammar for this tool_choice
    parser = plan.parser(prompt)                                     # incremental: feed(delta) -> events
    for delta in deltas: events = parser.feed(delta)                 # content / reasoning / call_start / call_args
    parser.finish(); out = parser.result()                           # ParsedOutput(content, reasoning, tool_calls)
    plan.parse(text, prompt)                                         # the same, for a whole output

- ``plan_tools`` validates OpenAI-shaped ``tools`` and ``tool_choice`` (``ToolError`` names the field) and picks
  the format from the template (``formats.detect_format``): hermes, llama3, mistral, or generic for templates
  without tool support (tools explained in a system message, the reply a JSON envelope).
- Messages are OpenAI's: ``role: assistant`` with ``tool_calls`` (arguments as JSON text) and ``role: tool`` with
  ``tool_call_id`` render through the template's own tool syntax, or the generic one.
- ``ToolPlan.constraint()`` is None for ``none``; ``required`` and named choices are fully constrained to the
  tools' parameter schemas; ``auto`` lets text run free until the call's opening marker.
- ``<think>...</think>`` (templates that use it) goes to ``reasoning``; a call after it is still found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..structured.params import StructuredOutputsParams
from ..tokenizer import ChatTemplate
from .formats import FORMATS, ToolFormat, detect_format, uses_reasoning
from .parser import CallSyntax, Event, OutputParser, ParsedOutput, parse
from .spec import Tool, ToolCall, ToolChoice, ToolError, parse_tool_choice, parse_tools


@dataclass(frozen=True)
class ToolPlan:
    """How one chat request does tools: its format, tools, choice, and whether replies carry reasoning."""

    format: ToolFormat
    tools: tuple[Tool, ...]
    choice: ToolChoice
    parallel: bool = True
    reasoning: bool = False

    def render(self, template: ChatTemplate, messages: list[dict], **kwargs: Any) -> str:
        """The prompt text: the tools and the history's calls and results in the template's own syntax."""
        msgs, tools = self.format.render_messages(messages, list(self.tools), self.choice)
        return template.render(msgs, add_generation_prompt=True, tools=tools, **kwargs)

    def constraint(self) -> StructuredOutputsParams | None:
        return self.format.constraint(list(self.tools), self.choice, self.parallel)

    @property
    def syntax(self) -> CallSyntax:
        """The call syntax parsed in replies: none at all when tool_choice is none."""
        if self.choice.mode == "none":
            return CallSyntax()
        return self.format.syntax

    def parser(self, prompt: str = "") -> OutputParser:
        """An incremental parser for one reply to ``prompt`` (a prompt ending in ``<think>`` starts in it)."""
        return OutputParser(
            self.syntax, reasoning=self.reasoning, in_reasoning=self.reasoning and prompt.rstrip().endswith("<think>")
        )

    def parse(self, text: str, prompt: str = "") -> ParsedOutput:
        parser = self.parser(prompt)
        parser.feed(text)
        parser.finish()
        return parser.result()


def plan_tools(
    template_source: str | None,
    tools: Any = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    format: str | None = None,
) -> ToolPlan:
    """Validate ``tools`` / ``tool_choice`` (OpenAI's shapes; ``ToolError`` otherwise) and plan the request.
    ``format`` forces a format by name (``hermes``, ``llama3``, ``mistral``, ``generic``)."""
    parsed = parse_tools(tools)
    choice = parse_tool_choice(tool_choice, parsed)
    fmt = FORMATS[format] if format else detect_format(template_source)
    return ToolPlan(fmt, tuple(parsed), choice, bool(parallel_tool_calls), uses_reasoning(template_source))


__all__ = [
    "CallSyntax",
    "Event",
    "OutputParser",
    "ParsedOutput",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "ToolError",
    "ToolFormat",
    "ToolPlan",
    "detect_format",
    "parse",
    "plan_tools",
]
