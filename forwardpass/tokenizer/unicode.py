"""Code point classes exactly as llama.cpp's unicode.cpp sees them, and the "collapsed" text its regexes run on.

llama.cpp does not run its pre-tokenizer regexes on the text itself: it maps every code point >= 128 to one
byte that stands for its Unicode category (letter, number, ...) and rewrites ``\\p{L}`` etc. into classes
over those bytes (ref: ggml-org/llama.cpp#6920). We do the same with one character per code point, so match
offsets in the collapsed string are offsets in the text. The category table is llama.cpp's own (a newer
Unicode version than Python's ``unicodedata``), kept in ``unicode_data.py``.
"""

from __future__ import annotations

import bisect
import re
import sys
from functools import lru_cache

from . import unicode_data

# llama.cpp's category flags (unicode.h)
UNDEFINED, NUMBER, LETTER, SEPARATOR, ACCENT_MARK, PUNCTUATION, SYMBOL, CONTROL = (1 << i for i in range(8))

# the stand-in characters of the collapsed text (llama.cpp's k_ucat_cpt), and 0x0B for non-ASCII whitespace
COLLAPSED_CHAR = {NUMBER: "\xd1", LETTER: "\xd2", PUNCTUATION: "\xd3", ACCENT_MARK: "\xd4", SYMBOL: "\xd5"}
COLLAPSED_OTHER = "\xd0"
COLLAPSED_SPACE = "\x0b"


@lru_cache(maxsize=1)
def _table() -> tuple[list[int], list[int]]:
    starts: list[int] = []
    flags: list[int] = []
    for item in unicode_data.RANGES.rstrip(",").split(","):
        start, flag = item.split(":")
        starts.append(int(start, 16))
        flags.append(int(flag, 16))
    return starts, flags


def category_flags(cp: int) -> int:
    """llama.cpp's category flag of a code point (one of NUMBER, LETTER, ...; UNDEFINED when unassigned)."""
    starts, flags = _table()
    return flags[bisect.bisect_right(starts, cp) - 1]


class _CollapseMap(dict):
    """A str.translate table filled lazily: a text only pays for the distinct characters it holds."""

    def __missing__(self, cp: int) -> str:
        if cp < 128:
            value = chr(cp)
        elif cp in unicode_data.WHITESPACE:
            value = COLLAPSED_SPACE
        else:
            value = COLLAPSED_CHAR.get(category_flags(cp), COLLAPSED_OTHER)
        self[cp] = value
        return value


class _WideMap(dict):
    """Non-ASCII whitespace -> 0x0B, everything else kept (llama.cpp's std::wregex path)."""

    def __missing__(self, cp: int) -> str:
        value = COLLAPSED_SPACE if cp >= 128 and cp in unicode_data.WHITESPACE else chr(cp)
        self[cp] = value
        return value


_COLLAPSE = _CollapseMap()
_WIDE = _WideMap()


def collapse(text: str) -> str:
    """One character per code point: ASCII kept, other code points replaced by their category's stand-in."""
    return text.translate(_COLLAPSE)


def widen(text: str) -> str:
    """The text with non-ASCII whitespace replaced by 0x0B, as llama.cpp's wide-regex path sees it."""
    return text.translate(_WIDE)


# \p{..} -> the class of collapsed characters and ASCII characters it stands for (llama.cpp's k_ucat_map)
_UCAT_BODY = {
    "N": "0-9\\xd1",
    "L": "A-Za-z\\xd2",
    "P": "!-#%-*,-/:;?@\\[-\\]_{}\\xd3",
    "M": "\\xd4",
    "S": "\\$\\+<->\\^`\\|~\\xd5",
}
# llama.cpp maps the letter sub-categories onto LETTER as a whole
for _sub in ("Lu", "Ll", "Lt", "Lm", "Lo"):
    _UCAT_BODY[_sub] = _UCAT_BODY["L"]
_UCAT_RE = re.compile(r"\\p\{(\w{1,2})\}")


def uses_categories(llama_regex: str) -> bool:
    return _UCAT_RE.search(llama_regex) is not None


def translate_regex(llama_regex: str) -> str:
    """Rewrite a llama.cpp pre-tokenizer regex into a Python one over the collapsed text.

    Mirrors unicode_regex_split's rewrite: ``\\p{X}`` becomes ``[body]`` outside a bracket expression and
    ``body`` inside one (nested brackets are not allowed there either).
    """
    out: list[str] = []
    inside = False
    i = 0
    while i < len(llama_regex):
        ch = llama_regex[i]
        escaped = i > 0 and llama_regex[i - 1] == "\\"
        if ch == "[" and not escaped:
            inside = True
        elif ch == "]" and inside and not escaped:
            inside = False
        m = _UCAT_RE.match(llama_regex, i)
        if m and ch == "\\" and m.group(1) in _UCAT_BODY:
            body = _UCAT_BODY[m.group(1)]
            out.append(body if inside else f"[{body}]")
            i = m.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _regenerate(cpp_path: str) -> str:
    """Source of unicode_data.py from llama.cpp's src/unicode-data.cpp."""
    src = open(cpp_path, encoding="utf-8").read()
    body = re.search(r"unicode_ranges_flags = \{.*?\n(.*?)\n\};", src, re.S).group(1)
    rows = [re.findall(r"0x([0-9A-Fa-f]+)", line) for line in body.splitlines() if line.startswith("{")]
    ranges = ",".join(f"{int(a, 16):x}:{int(b, 16) & 0xFF:x}" for a, b in rows)
    ws_body = re.search(r"unicode_set_whitespace = \{(.*?)\};", src, re.S).group(1)
    ws = sorted(int(x, 16) for x in re.findall(r"0x([0-9A-Fa-f]+)", ws_body))
    return (
        '"""Unicode category ranges and whitespace set of llama.cpp\'s src/unicode-data.cpp (MIT License).\n\n'
        "Generated by `python -m forwardpass.tokenizer.unicode path/to/unicode-data.cpp > unicode_data.py`\n"
        "from the llama.cpp vendored by llama-cpp-python 0.3.36. RANGES: 'start:flags' in hex; a range ends\n"
        'where the next starts.\n"""\n'
        "RANGES = (\n" + "".join(f'    "{chunk},"\n' for chunk in _chunks(ranges)) + ")\n"
        "WHITESPACE = frozenset({\n"
        + "".join(f"    {', '.join(hex(c) for c in ws[i : i + 12])},\n" for i in range(0, len(ws), 12))
        + "})\n"
    )


def _chunks(text: str, width: int = 100) -> list[str]:
    parts = text.split(",")
    lines, cur = [], ""
    for p in parts:
        if cur and len(cur) + len(p) + 1 > width:
            lines.append(cur)
            cur = p
        else:
            cur = f"{cur},{p}" if cur else p
    lines.append(cur)
    return lines


if __name__ == "__main__":
    sys.stdout.write(_regenerate(sys.argv[1]))
