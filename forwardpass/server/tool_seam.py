"""What the Responses and Messages APIs need of tool calling and structured output, in one place.

Both APIs translate their requests into a chat-completions request (messages in OpenAI's chat shape, with
assistant ``tool_calls`` and ``role: "tool"`` messages; OpenAI's chat ``tools``, ``tool_choice`` and
``response_format``), so everything about tools goes through the chat path's machinery:

* ``render_prompt(llm, req)``: the prompt token ids for a parsed chat request (messages and tools);
* ``check_history(messages)``: refuse what the chat path cannot render;
* ``OutputParser``: the model's output split into text and tool calls, incrementally for streams.

Without tool calling in the chat path (issue 12), the chat parser refuses ``tools`` and JSON
``response_format`` with a 400 naming the field, ``check_history`` refuses tool calls and tool results in the
history, and the parser passes text through.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import invalid

if TYPE_CHECKING:
    from ..llm import LLM
    from .protocol import ChatRequest


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document (text)


@dataclass
class ParsedOutput:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)


def render_prompt(llm: "LLM", req: "ChatRequest", prefill: str = "") -> list[int]:
    """The prompt ids of a chat request; `prefill` is the start of the answer (Anthropic's final assistant
    message), placed after the template's generation prompt."""
    if not prefill:
        return llm.chat_prompt(req.messages, **req.template_kwargs)
    assert llm.chat_template is not None
    text = llm.chat_template.render(req.messages, add_generation_prompt=True, **req.template_kwargs)
    return llm.encode_prompt(text + prefill)


def check_history(messages: list[dict[str, Any]], param: str) -> None:
    """Tool calls and tool results in the conversation need the chat path's tool support."""
    for message in messages:
        if message.get("tool_calls") or message.get("role") == "tool":
            raise invalid("tool calls and tool results in the conversation are not supported yet (no tool "
                          "calling on this server)", param)


@dataclass
class StreamEvent:
    """A piece of streamed output: text, or the start / an argument piece of the `index`-th tool call."""

    kind: str  # "text", "call_start" or "call_arguments"
    text: str = ""
    index: int = 0
    call: ToolCall | None = None


class OutputParser:
    """Splits a generation into text and tool calls. ``feed`` takes the cumulative text as it grows and returns the
    new events; ``finish`` the last ones and the whole result."""

    def __init__(self, req: "ChatRequest") -> None:
        self.req = req
        self._sent = 0

    def feed(self, text: str) -> list[StreamEvent]:
        delta, self._sent = text[self._sent:], len(text)
        return [StreamEvent("text", delta)] if delta else []

    def finish(self, text: str) -> tuple[list[StreamEvent], ParsedOutput]:
        return self.feed(text), ParsedOutput(text)
