"""Byte-level BPE pre-tokenizers: llama.cpp's regex list per ``tokenizer.ggml.pre`` (src/llama-vocab.cpp).

Each regex splits every piece the previous one produced into its matches and the gaps between them (both
kept), exactly like llama.cpp's unicode_regex_split. The regex strings below are llama.cpp's own, copied
verbatim; ``unicode.translate_regex`` turns them into Python regexes over the collapsed text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import TokenizerError
from . import unicode

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
LLAMA3 = (
    _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+"
)
QWEN2 = (
    _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+"
)
QWEN35 = (
    _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_UPPER = "((?=[\\p{L}])([^a-z]))"
_LOWER = "((?=[\\p{L}])([^A-Z]))"
GPT4O = (
    f"[^\\r\\n\\p{{L}}\\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?|[^\\r\\n\\p{{L}}\\p{{N}}]?{_UPPER}+{_LOWER}*"
    f"{_CONTRACTIONS}?|\\p{{N}}{{1,3}}| ?[^\\s\\p{{L}}\\p{{N}}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
TEKKEN = (
    f"[^\\r\\n\\p{{L}}\\p{{N}}]?{_UPPER}*{_LOWER}+|[^\\r\\n\\p{{L}}\\p{{N}}]?{_UPPER}+{_LOWER}*|\\p{{N}}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
DEEPSEEK_LLM = [
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",  # noqa: E501
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+\\Z",  # llama.cpp's "\\s+$": ECMAScript $ is Python's \Z
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}+",
]


@dataclass(frozen=True)
class PreTokenizerSpec:
    """What a ``tokenizer.ggml.pre`` value means to llama.cpp: the regexes and a few decoding flags."""

    regexes: tuple[str, ...]
    clean_spaces: bool = True  # llama.cpp's default for BPE vocabularies
    ignore_merges: bool = False  # a word that is a whole token skips the merges (llama3 and others)
    add_bos: bool = False  # llama.cpp's default before tokenizer.ggml.add_bos_token overrides it
    names: tuple[str, ...] = field(default=())


_SPECS = [
    PreTokenizerSpec(("[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2, "\\p{N}+", "[0-9][0-9][0-9]"), names=("default",)),
    PreTokenizerSpec(
        (LLAMA3,),
        ignore_merges=True,
        add_bos=True,
        names=(
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ),
    ),
    PreTokenizerSpec((LLAMA3,), names=("dbrx", "smaug-bpe")),
    PreTokenizerSpec(tuple(DEEPSEEK_LLM), clean_spaces=False, names=("deepseek-llm",)),
    PreTokenizerSpec(
        ("[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"),
        clean_spaces=False,
        names=("deepseek-coder",),
    ),
    PreTokenizerSpec(
        (
            "\\p{N}{1,3}",
            "[一-龥぀-ゟ゠-ヿ]+",
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
            "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
        ),
        clean_spaces=False,
        names=("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"),
    ),
    PreTokenizerSpec(
        (
            "[\\p{P}\\$\\+<=>\\^~\\|`]+",
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
            "[0-9][0-9][0-9]",
        ),
        names=("falcon",),
    ),
    PreTokenizerSpec(("\\p{N}", GPT2), names=("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2")),
    PreTokenizerSpec(("\\p{N}", GPT2), clean_spaces=False, names=("smollm", "command-r")),
    PreTokenizerSpec(
        (GPT2,),
        names=(
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "mpt",
            "olmo",
            "jais",
            "exaone4",
        ),
    ),
    PreTokenizerSpec((GPT2,), clean_spaces=False, names=("trillion", "granite-docling")),
    PreTokenizerSpec((QWEN2,), names=("stablelm2",)),
    PreTokenizerSpec(
        (QWEN2,),
        clean_spaces=False,
        names=("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"),
    ),
    PreTokenizerSpec((QWEN2,), names=("megrez",)),
    PreTokenizerSpec((QWEN35,), clean_spaces=False, names=("qwen35",)),
    PreTokenizerSpec((" ?[^(\\s|.,!?…。，、।۔،)]+",), clean_spaces=False, names=("poro-chat",)),
    PreTokenizerSpec((" ?[^(\\s|.,!?…。，、।۔،)]+",), names=("bloom", "gpt3-finnish")),
    PreTokenizerSpec((" ?[^(\\s|.,!?…。，、।۔،)]+", "\\p{N}"), clean_spaces=False, names=("viking",)),
    PreTokenizerSpec((TEKKEN,), clean_spaces=False, ignore_merges=True, add_bos=True, names=("tekken",)),
    PreTokenizerSpec((GPT4O,), clean_spaces=False, names=("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2")),
]
PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {name: spec for spec in _SPECS for name in spec.names}


def spec_for(pre: str | None) -> PreTokenizerSpec:
    """The spec of a ``tokenizer.ggml.pre`` value; a missing value means llama.cpp's 'default'."""
    name = pre or "default"
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        supported = ", ".join(sorted(PRE_TOKENIZERS))
        raise TokenizerError(f"unsupported BPE pre-tokenizer {name!r}; supported: {supported}") from None


class RegexSplitter:
    """Splits text into words with a list of llama.cpp regexes (matches and gaps both become words)."""

    def __init__(self, regexes: tuple[str, ...]) -> None:
        self._steps: list[tuple[re.Pattern[str], bool]] = []
        for expr in regexes:
            collapsed = unicode.uses_categories(expr)
            pattern = unicode.translate_regex(expr) if collapsed else expr
            self._steps.append((re.compile(pattern, re.ASCII), collapsed))

    def split(self, text: str) -> list[str]:
        """Words of ``text`` in order; their concatenation is ``text``."""
        if not text:
            return []
        views = {True: None, False: None}
        spans = [(0, len(text))]
        for pattern, collapsed in self._steps:
            view = views[collapsed]
            if view is None:
                view = views[collapsed] = unicode.collapse(text) if collapsed else unicode.widen(text)
            spans = _split_spans(pattern, view, spans)
        return [text[a:b] for a, b in spans]


def _split_spans(pattern: re.Pattern[str], view: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in spans:
        prev = start
        # endpos makes the piece's end the string's end for $ and lookaheads, as llama.cpp's sub-range does
        for m in pattern.finditer(view, start, end):
            a, b = m.span()
            if a > prev:
                out.append((prev, a))
            if b > a:  # llama.cpp keeps empty matches as empty words, which produce no tokens
                out.append((a, b))
            prev = b
        if prev < end:
            out.append((prev, end))
    return out
