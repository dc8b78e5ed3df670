"""Turning a model's output into text, reasoning and tool calls, incrementally.

``OutputParser.feed(delta)`` returns events as soon as they are certain: ``content`` and ``reasoning`` text,
``call_start`` (index, id, name) once a call's name is complete, then ``call_args`` pieces of its arguments'
JSON text. Text that may be the start of a marker (``<tool_call>``, ``</think>``) is held back until decided,
so nothing is ever taken back; ``finish()`` releases what is left. Feeding the same output in any pieces gives
the same joined events (the tests cut a stream at every character), and ``parse(text)`` is ``feed`` + ``finish``,
so streamed and whole answers agree.

Call syntaxes (``CallSyntax``): a marker then one JSON call object and an optional end marker (Hermes/Qwen
``<tool_call>{...}</tool_call>``), a marker then a JSON array of calls (Mistral ``[TOOL_CALLS][...]``), a bare
JSON call at the start of the output (Llama 3), or the generic envelope ``{"content": ...}`` /
``{"tool_calls": [...]}`` that the whole output is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import jsonscan as js
from .spec import ToolCall, new_call_id


@dataclass(frozen=True)
class CallSyntax:
    start: str = ""  # the marker that opens calls ("" : none)
    end: str = ""  # the marker that closes each call ("" : none)
    array: bool = False  # the marker is followed by a JSON array of calls
    bare_json: bool = False  # an output starting with "{" is a call
    envelope: bool = False  # the whole output is {"content": "..."} or {"tool_calls": [...]}
    args_key: str = "arguments"


@dataclass
class Event:
    kind: str  # content | reasoning | call_start | call_args
    text: str = ""
    index: int = -1
    id: str = ""
    name: str = ""


@dataclass
class ParsedOutput:
    content: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class OutputParser:
    """Incremental parser of one output; see the module docstring. ``reasoning``: the template uses
    ``<think>...</think>``; ``in_reasoning``: the prompt already opened ``<think>``."""

    THINK, END_THINK = "<think>", "</think>"

    def __init__(self, syntax: CallSyntax, *, reasoning: bool = False, in_reasoning: bool = False) -> None:
        self.syntax = syntax
        self.buf = ""
        self.pos = 0  # everything before pos is decided
        self.phase = "reasoning" if in_reasoning else ("think?" if reasoning else "main")
        self.events: list[Event] = []
        self._ws = ""  # whitespace held back in text (dropped next to calls)
        self._n_calls = 0
        self._call: dict | None = None  # the call being streamed: index, start, args_sent, started
        self._mode = "text"  # text | call | end_marker | array | envelope | raw
        self._env_content = 0  # characters of the envelope's content already sent
        self._done = False
        self._think_closed = False

    # ---- public ----
    def feed(self, delta: str) -> list[Event]:
        self.buf += delta
        return self._run(final=False)

    def finish(self) -> list[Event]:
        return self._run(final=True)

    def result(self) -> ParsedOutput:
        out = ParsedOutput()
        calls: dict[int, ToolCall] = {}
        reasoning: list[str] = []
        for e in self.events:
            if e.kind == "content":
                out.content += e.text
            elif e.kind == "reasoning":
                reasoning.append(e.text)
            elif e.kind == "call_start":
                calls[e.index] = ToolCall(e.name, "", e.id)
            elif e.kind == "call_args":
                calls[e.index].arguments += e.text
        out.reasoning = "".join(reasoning) if self._reasoned else None
        out.tool_calls = [calls[i] for i in sorted(calls)]
        return out

    @property
    def _had_think(self) -> bool:
        return any(e.kind == "reasoning" for e in self.events)

    @property
    def _reasoned(self) -> bool:
        return self.phase == "reasoning" or self._had_think or self._think_closed

    # ---- driver ----
    def _run(self, final: bool) -> list[Event]:
        start = len(self.events)
        while not self._done:
            before = (self.pos, self.phase, self._mode, len(self.events))
            self._step(final)
            if (self.pos, self.phase, self._mode, len(self.events)) == before:
                break
        if final and not self._done:
            self._flush()
        return self.events[start:]

    def _emit(self, kind: str, text: str = "", **kw) -> None:
        if text or kind.startswith("call_start"):
            self.events.append(Event(kind, text, **kw))

    def _text(self, text: str, final: bool = False) -> None:
        """Content text, holding back trailing whitespace (a call may follow)."""
        text = self._ws + text
        self._ws = ""
        if not any(e.kind in ("content", "call_start") for e in self.events):
            text = text.lstrip()
        body = text.rstrip(js.WS)
        self._ws = text[len(body) :]
        self._emit("content", body)

    def _step(self, final: bool) -> None:
        if self.phase == "think?":
            return self._think_start(final)
        if self.phase == "reasoning":
            return self._reasoning(final)
        handler = {
            "text": self._in_text,
            "call": self._in_call,
            "end_marker": self._end_marker,
            "array": self._in_array,
            "envelope": self._in_envelope,
            "raw": self._in_raw,
        }[self._mode]
        handler(final)

    # ---- reasoning ----
    def _think_start(self, final: bool) -> None:
        rest = self.buf[self.pos :].lstrip()
        if not rest and not final:
            return
        if rest.startswith(self.THINK):
            self.pos = self.buf.index(self.THINK, self.pos) + len(self.THINK)
            self.phase = "reasoning"
        elif self.THINK.startswith(rest) and not final:
            return
        else:
            self.phase = "main"

    def _reasoning(self, final: bool) -> None:
        i = self.buf.find(self.END_THINK, self.pos)
        if i >= 0:
            self._emit("reasoning", self.buf[self.pos : i].strip() if not self._had_think else self.buf[self.pos : i])
            self.pos = js.skip_ws(self.buf, i + len(self.END_THINK))
            self.phase = "main"
            self._think_closed = True
            return
        keep = 0 if final else _partial_suffix(self.buf[self.pos :], self.END_THINK)
        text = self.buf[self.pos : len(self.buf) - keep]
        if not self._had_think:
            text = text.lstrip()
        self._emit("reasoning", text)
        self.pos = len(self.buf) - keep

    # ---- text and markers ----
    def _in_text(self, final: bool) -> None:
        syn = self.syntax
        at_start = not any(e.kind in ("content", "call_start") for e in self.events) and not self._ws
        if syn.envelope or (syn.bare_json and at_start):
            j = js.skip_ws(self.buf, self.pos)
            if j >= len(self.buf):
                return
            if self.buf[j] == "{":
                self.pos, self._mode = j, ("envelope" if syn.envelope else "call")
                if not syn.envelope:
                    self._call = None
                return
            if syn.envelope:
                self._mode = "raw"
                return
        if not syn.start:
            self._text(self.buf[self.pos :])
            self.pos = len(self.buf)
            return
        i = self.buf.find(syn.start, self.pos)
        if i >= 0:
            self._text(self.buf[self.pos : i])
            self._ws = ""  # whitespace before a call is not content
            self.pos = js.skip_ws(self.buf, i + len(syn.start))
            self._mode = "array" if syn.array else "call"
            self._call = None
            return
        keep = 0 if final else _partial_suffix(self.buf[self.pos :], syn.start)
        self._text(self.buf[self.pos : len(self.buf) - keep])
        self.pos = len(self.buf) - keep

    def _in_raw(self, final: bool) -> None:
        self._text(self.buf[self.pos :])
        self.pos = len(self.buf)

    # ---- one call object ----
    def _in_call(self, final: bool) -> None:
        end = self._call_end(final)
        if end is None:
            return
        self.pos = js.skip_ws(self.buf, end)
        self._mode = "end_marker" if self.syntax.end else "text"

    def _call_end(self, final: bool) -> int | None:
        """Stream the call object at ``pos``; its end index once complete, else None (for good if it is malformed:
        the rest is then raw text)."""
        end = self._stream_call(final)
        if end == js.MALFORMED:
            self._mode = "raw"
            return None
        return end

    def _stream_call(self, final: bool) -> int | None:
        """Stream the call object at ``pos``; its end index once complete, MALFORMED, or None for now."""
        j = js.skip_ws(self.buf, self.pos)
        if j >= len(self.buf):
            return None
        if self.buf[j] != "{":
            return js.MALFORMED if self._call is None else None
        if self._call is None:
            self._call = {"index": self._n_calls, "started": False, "sent": 0}
        scan = js.scan_object(self.buf, j)
        call = self._call
        name = scan.get("name")
        if not call["started"]:
            if scan.malformed or (scan.end is not None and (name is None or name.end is None)):
                return js.MALFORMED
            if name is None or name.end is None:
                return None
            name_text, _ = js.partial_string(self.buf, name.start) if self.buf[name.start] == '"' else ("", True)
            if not name_text:
                return js.MALFORMED
            call["started"] = True
            self._n_calls += 1
            self._ws = ""
            self._emit("call_start", index=call["index"], id=new_call_id(), name=name_text)
        args = scan.get(self.syntax.args_key)
        if args is not None:
            stop = args.end if args.end is not None else len(self.buf)
            piece = self.buf[args.start + call["sent"] : stop]
            call["sent"] += len(piece)
            self._emit("call_args", piece, index=call["index"])
        if scan.end is None:
            if final:
                return len(self.buf)  # cut off (max_tokens): what arrived is what there is
            return None
        if args is None:
            self._emit("call_args", "{}", index=call["index"])
        self._call = None
        return scan.end

    def _end_marker(self, final: bool) -> None:
        marker = self.syntax.end
        j = js.skip_ws(self.buf, self.pos)
        rest = self.buf[j:]
        if rest.startswith(marker):
            self.pos = js.skip_ws(self.buf, j + len(marker))
            self._mode = "text"
        elif marker.startswith(rest) and not final:
            return
        else:
            self._mode = "text"  # no end marker: carry on with text

    # ---- a JSON array of calls (Mistral) ----
    def _in_array(self, final: bool) -> None:
        j = js.skip_ws(self.buf, self.pos)
        if j >= len(self.buf):
            return
        if self._call is None:
            c = self.buf[j]
            if c in "[,":
                self.pos = j + 1
                return
            if c == "]":
                self.pos, self._mode = js.skip_ws(self.buf, j + 1), "text"
                self._done = self.syntax.envelope
                return
            if c != "{":
                self._mode = "raw"
                return
            self.pos = j
        end = self._call_end(final)
        if end is None:
            return
        self.pos = end

    # ---- the generic envelope ----
    def _in_envelope(self, final: bool) -> None:
        scan = js.scan_object(self.buf, self.pos)
        first = scan.members[0] if scan.members else None
        if scan.malformed or (first is not None and first.key not in ("content", "tool_calls")):
            self._mode = "raw"
            return
        if first is None:
            return
        opener = self.buf[first.start]
        if first.key == "tool_calls":
            if opener != "[":
                self._mode = "raw"
                return
            self.pos, self._mode = first.start, "array"  # its "]" ends the envelope
            return
        if opener != '"':
            self._mode = "raw"
            return
        text, complete = js.partial_string(self.buf, first.start)
        self._emit("content", text[self._env_content :])
        self._env_content = len(text)
        if complete:
            self._done = True

    def _flush(self) -> None:
        """End of output: text held back is text after all (trailing whitespace is dropped, as leading is)."""
        if self.phase != "main":
            self.phase = "main" if self.phase == "think?" else self.phase
        if self._mode in ("text", "raw", "end_marker"):
            self._text(self.buf[self.pos :])
            self.pos = len(self.buf)


def parse(text: str, syntax: CallSyntax, *, reasoning: bool = False, in_reasoning: bool = False) -> ParsedOutput:
    """The whole output at once (the same as feeding it in pieces)."""
    parser = OutputParser(syntax, reasoning=reasoning, in_reasoning=in_reasoning)
    parser.feed(text)
    parser.finish()
    return parser.result()
