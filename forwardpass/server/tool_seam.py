"""What the Responses and Messages APIs need of tool calling and structured output, in one place.

Both APIs translate their requests into a chat-completions request (messages in OpenAI's chat shape, with
assistant ``tool_calls`` and ``role: "tool"`` messages; OpenAI's chat ``tools``, ``tool_choice`` and
``response_format``), so tools go through the chat path's machinery (``forwardpass.tools``): ``ToolSession``
holds one request's tool plan (the call format from the model's template), renders its prompt (tools and call
history in the template's syntax), puts the request under its constraint (a tool_choice's grammar, else the
response format), and gives an ``OutputParser`` that splits the output into text and tool calls, incrementally
for streams. Reasoning text (``<think>``) is parsed out of the answer and not returned by these APIs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..tools import ToolPlan
from ..tools.parser import OutputParser as CallParser
from .errors import APIError
from .openai_routes import chat_plan, with_constraint

if TYPE_CHECKING:
    from .protocol import ChatRequest
    from .state import ServerState


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document (text)


@dataclass
class ParsedOutput:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class StreamEvent:
    """A piece of streamed output: text, or the start / an argument piece of the `index`-th tool call."""

    kind: str  # "text", "call_start" or "call_arguments"
    text: str = ""
    index: int = 0
    call: ToolCall | None = None


class OutputParser:
    """Splits a generation into text and tool calls. ``feed`` takes the cumulative text as it grows and returns the
    new events; ``finish`` the last ones and the whole result. Without tools it passes the text through."""

    def __init__(self, parser: CallParser | None) -> None:
        self.parser = parser
        self._sent = 0

    def feed(self, text: str) -> list[StreamEvent]:
        delta, self._sent = text[self._sent :], len(text)
        if self.parser is None:
            return [StreamEvent("text", delta)] if delta else []
        return self._events(self.parser.feed(delta))

    def finish(self, text: str) -> tuple[list[StreamEvent], ParsedOutput]:
        events = self.feed(text)
        if self.parser is None:
            return events, ParsedOutput(text)
        events += self._events(self.parser.finish())
        result = self.parser.result()
        return events, ParsedOutput(result.content, [ToolCall(c.id, c.name, c.arguments) for c in result.tool_calls])

    @staticmethod
    def _events(events: list) -> list[StreamEvent]:
        out = []
        for e in events:
            if e.kind == "content" and e.text:
                out.append(StreamEvent("text", e.text))
            elif e.kind == "call_start":
                out.append(StreamEvent("call_start", index=e.index, call=ToolCall(e.id, e.name, "")))
            elif e.kind == "call_args" and e.text:
                out.append(StreamEvent("call_arguments", e.text, e.index))
        return out


class ToolSession:
    """One request's tools: its plan, prompt, constraint and output parser. Errors name the API's own fields
    (`rename`: chat field -> this API's field)."""

    def __init__(self, state: "ServerState", req: "ChatRequest", rename: Mapping[str, str]) -> None:
        llm = state.llm
        assert llm is not None and llm.chat_template is not None
        self.state, self.req, self.rename = state, req, rename
        try:
            self.plan: ToolPlan
            self.plan, self.constraint, param = chat_plan(req, llm.chat_template.source)
        except APIError as e:
            e.param = rename.get(e.param or "", e.param)
            raise
        self.structured_param = rename.get(param or "", param)
        self.parsed = bool(self.plan.tools) or self.plan.reasoning or any(m.get("tool_calls") for m in req.messages)
        self.prompt_text = ""

    def tokenizer(self, prefill: str = "") -> Callable[[], list[list[int]]]:
        """The prompt ids (with the constraint compiled alongside, in the worker thread); `prefill` is the start of
        the answer (Anthropic's final assistant message), placed after the template's generation prompt."""
        llm = self.state.llm
        assert llm is not None and llm.chat_template is not None

        def tokenize() -> list[list[int]]:
            self.prompt_text = self.plan.render(llm.chat_template, self.req.messages, **self.req.template_kwargs)
            return [llm.encode_prompt(self.prompt_text + prefill)]

        return with_constraint(self.state, self.req, self.constraint, tokenize)

    def parser(self) -> OutputParser:
        """A parser for one answer (call after the prompt has been rendered)."""
        return OutputParser(self.plan.parser(self.prompt_text) if self.parsed else None)
