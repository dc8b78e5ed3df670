"""Scanning JSON that is still arriving: where a value ends (or that it has not ended yet), the members of an
object seen so far, and the decoded text of an unfinished string. Every function takes the whole buffer and a
start index and never raises on a cut: ``None`` means "not complete yet"; ``MALFORMED`` means it never will be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

WS = " \t\n\r"
MALFORMED = -1
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERAL_CHARS = set("0123456789+-.eEtrufalsn")


def skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in WS:
        i += 1
    return i


def string_end(s: str, i: int) -> int | None:
    """``s[i]`` is an opening quote: the index after the closing quote, or None if it has not arrived."""
    j = i + 1
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def value_end(s: str, i: int) -> int | None:
    """The index after the JSON value starting at ``s[i]`` (None: incomplete; MALFORMED: not JSON)."""
    if i >= len(s):
        return None
    c = s[i]
    if c == '"':
        return string_end(s, i)
    if c in "{[":
        return _container_end(s, i)
    if c in _LITERAL_CHARS:
        j = i
        while j < len(s) and s[j] in _LITERAL_CHARS:
            j += 1
        return j if j < len(s) else None  # a number may go on until a delimiter arrives
    return MALFORMED


def _container_end(s: str, i: int) -> int | None:
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c == '"':
            end = string_end(s, j)
            if end is None:
                return None
            j = end
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


@dataclass
class Member:
    key: str
    start: int  # where the value starts
    end: int | None = None  # after the value; None while it is arriving


@dataclass
class ObjectScan:
    members: list[Member] = field(default_factory=list)
    end: int | None = None  # after the closing brace
    malformed: bool = False

    def get(self, key: str) -> Member | None:
        return next((m for m in self.members if m.key == key), None)


def scan_object(s: str, i: int) -> ObjectScan:
    """The members of the object starting at ``s[i] == "{"`` that have begun to arrive."""
    out = ObjectScan()
    j = skip_ws(s, i + 1)
    while j < len(s):
        if s[j] == "}":
            out.end = j + 1
            return out
        if s[j] == ",":
            j = skip_ws(s, j + 1)
            continue
        if s[j] != '"':
            out.malformed = True
            return out
        key_end = string_end(s, j)
        if key_end is None:
            return out
        try:
            key = json.loads(s[j:key_end])
        except ValueError:
            out.malformed = True
            return out
        k = skip_ws(s, key_end)
        if k >= len(s):
            return out
        if s[k] != ":":
            out.malformed = True
            return out
        k = skip_ws(s, k + 1)
        if k >= len(s):
            return out
        member = Member(key, k)
        out.members.append(member)
        end = value_end(s, k)
        if end == MALFORMED:
            out.malformed = True
            return out
        if end is None:
            # a number at the very end may be complete once "}" arrives; the caller sees end None for now
            return out
        member.end = end
        j = skip_ws(s, end)
    return out


def partial_string(s: str, i: int) -> tuple[str, bool]:
    """The decoded text of the string starting at ``s[i] == '"'`` so far, and whether it is complete.
    An escape cut in the middle (``\\u00``, a lone high surrogate) is held back until it is whole."""
    out: list[str] = []
    j = i + 1
    while j < len(s):
        c = s[j]
        if c == '"':
            return "".join(out), True
        if c != "\\":
            out.append(c)
            j += 1
            continue
        if j + 1 >= len(s):
            break
        e = s[j + 1]
        if e != "u":
            out.append(_ESCAPES.get(e, e))
            j += 2
            continue
        if j + 6 > len(s):
            break
        code = int(s[j + 2 : j + 6], 16)
        if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for the low half
            if j + 12 > len(s):
                break
            low = int(s[j + 8 : j + 12], 16)
            out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
            j += 12
            continue
        out.append(chr(code))
        j += 6
    return "".join(out), False
