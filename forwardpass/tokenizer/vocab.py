"""The vocabulary as llama.cpp loads it from GGUF metadata (src/llama-vocab.cpp, llama_vocab::impl::load).

Besides the token list this resolves what llama.cpp decides on its own: default special ids per tokenizer
model, token attributes (with the by-name fixes it applies, e.g. marking ``<|im_end|>`` as control), the
end-of-generation set, and the special-token list the text partition uses (longest first).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any

import numpy as np

from ..errors import TokenizerError

logger = logging.getLogger(__name__)

KEY = "tokenizer.ggml."


class TokenAttr(IntFlag):
    """llama.cpp's llama_token_attr bits."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# GGUF token_type (llama_token_type) -> attribute: UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE
_TYPE_TO_ATTR = np.array([0, 4, 1, 8, 16, 2, 32], dtype=np.int32)

# texts llama.cpp recognises regardless of metadata (llama-vocab.cpp, "auto-detect special tokens by text")
EOT_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
)
EOM_TEXTS = ("<|eom_id|>",)
FIM_TEXTS = {
    "fim_pre": (
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ),
    "fim_suf": (
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ),
    "fim_mid": (
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
)
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss: made USER_DEFINED


@dataclass
class Vocab:
    """Token texts, scores and attributes plus the special ids and flags llama.cpp derives from metadata."""

    model: str
    pre: str
    tokens: list[str]
    attrs: np.ndarray  # (n_vocab,) int32 TokenAttr bits
    scores: np.ndarray | None  # (n_vocab,) float32, SPM only
    token_to_id: dict[str, int]
    special: dict[str, int | None] = field(default_factory=dict)  # bos, eos, eot, eom, unk, pad, fim_*
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    clean_spaces: bool = False
    eog_ids: frozenset[int] = frozenset()

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def attr(self, token_id: int) -> int:
        return int(self.attrs[token_id])

    def special_tokens(self) -> list[int]:
        """Control, user-defined and unknown tokens, longest text first: the order of the text partition."""
        mask = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN
        ids = np.nonzero(self.attrs & int(mask))[0].tolist()
        # llama.cpp uses std::sort by byte length (ties unordered); ties never overlap in practice
        return sorted(ids, key=lambda i: -len(text_bytes(self.tokens[i])))


def text_bytes(text: str) -> bytes:
    """UTF-8 of a token text; raw bytes a reader kept as surrogate escapes come back as those bytes."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


def _get(metadata: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = metadata.get(KEY + name, default)
    return value.item() if isinstance(value, np.generic) else value


def _token_list(metadata: Mapping[str, Any]) -> list[str]:
    tokens = metadata.get(KEY + "tokens")
    if tokens is None or len(tokens) == 0:
        raise TokenizerError(f"GGUF metadata has no {KEY}tokens list")
    tokens = [t if isinstance(t, str) else bytes(t).decode("utf-8", "surrogateescape") for t in tokens]
    for i, t in enumerate(tokens):
        if not t:  # llama.cpp renames empty tokens so that every text maps back to one id
            tokens[i] = f"[EMPTY_{i}]"
    return tokens


def _array(metadata: Mapping[str, Any], name: str, n: int, dtype: type) -> np.ndarray | None:
    value = metadata.get(KEY + name)
    if value is None:
        return None
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != 1 or arr.shape[0] < n:
        raise TokenizerError(f"{KEY}{name} has {arr.shape} entries for {n} tokens")
    return arr[:n]


def load_vocab(
    metadata: Mapping[str, Any],
    *,
    spm: bool,
    pre: str = "default",
    clean_spaces: bool = False,
    add_bos_default: bool = False,
) -> Vocab:
    """Build a Vocab from GGUF metadata; ``spm`` selects llama.cpp's SPM defaults, otherwise its BPE ones."""
    tokens = _token_list(metadata)
    n = len(tokens)
    types = _array(metadata, "token_type", n, np.int64)
    if types is None:
        attrs = np.full(n, int(TokenAttr.NORMAL), dtype=np.int32)
    else:
        attrs = np.where((types >= 0) & (types < len(_TYPE_TO_ATTR)), _TYPE_TO_ATTR[np.clip(types, 0, 6)], 0)
        attrs = attrs.astype(np.int32)
    vocab = Vocab(
        model=str(_get(metadata, "model")),
        pre=pre,
        tokens=tokens,
        attrs=attrs,
        scores=_array(metadata, "scores", n, np.float32) if spm else None,
        token_to_id=dict(zip(tokens, range(n))),
        add_bos=bool(_get(metadata, "add_bos_token", True if spm else add_bos_default)),
        add_eos=bool(_get(metadata, "add_eos_token", False)),
        add_space_prefix=bool(_get(metadata, "add_space_prefix", spm)),
        clean_spaces=False if spm else clean_spaces,
    )
    _resolve_special_ids(vocab, metadata, spm)
    _apply_text_rules(vocab, metadata)
    return vocab


def _resolve_special_ids(vocab: Vocab, metadata: Mapping[str, Any], spm: bool) -> None:
    """llama.cpp's defaults per model type, replaced by metadata ids that are in range."""
    defaults = {"bos": 1, "eos": 2, "unk": 0} if spm else {"bos": 11, "eos": 11}
    keys = {
        "bos": "bos_token_id",
        "eos": "eos_token_id",
        "eot": "eot_token_id",
        "eom": "eom_token_id",
        "unk": "unknown_token_id",
        "sep": "seperator_token_id",
        "pad": "padding_token_id",
        "fim_pre": "fim_pre_token_id",
        "fim_suf": "fim_suf_token_id",
        "fim_mid": "fim_mid_token_id",
        "fim_pad": "fim_pad_token_id",
        "fim_rep": "fim_rep_token_id",
        "fim_sep": "fim_sep_token_id",
    }
    deprecated = {"fim_pre": "prefix_token_id", "fim_suf": "suffix_token_id", "fim_mid": "middle_token_id"}
    for name, key in keys.items():
        value = defaults.get(name)
        if value is not None and value >= vocab.n_tokens:
            value = None
        for k in (key, deprecated.get(name)):
            new = _get(metadata, k) if k else None
            if new is None:
                continue
            if 0 <= int(new) < vocab.n_tokens:
                value = int(new)
            else:
                logger.warning("bad special token %s%s = %s, using %s", KEY, k, new, value)
        vocab.special[name] = value


def _find_first(vocab: Vocab, texts: tuple[str, ...]) -> int | None:
    for text in texts:
        tid = vocab.token_to_id.get(text)
        if tid is not None:
            return tid
    return None


def _mark_control(vocab: Vocab, tid: int) -> None:
    if not vocab.attrs[tid] & TokenAttr.CONTROL:
        logger.debug("token %d %r was not control-type; treating it as control like llama.cpp", tid, vocab.tokens[tid])
        vocab.attrs[tid] |= int(TokenAttr.CONTROL)


def _apply_text_rules(vocab: Vocab, metadata: Mapping[str, Any]) -> None:
    """The by-text rules of llama.cpp's loader: EOT/EOM/FIM detection, unused tokens, the EOG set."""
    for name, texts in (("eot", EOT_TEXTS), ("eom", EOM_TEXTS), *FIM_TEXTS.items()):
        if vocab.special.get(name) is None:
            tid = _find_first(vocab, texts)
            if tid is not None:
                vocab.special[name] = tid
                _mark_control(vocab, tid)
    # control tokens named "unused" are unused
    for tid in np.nonzero(vocab.attrs & int(TokenAttr.CONTROL))[0].tolist():
        if "unused" in vocab.tokens[tid]:
            vocab.attrs[tid] |= int(TokenAttr.UNUSED)
    eog = {vocab.special[k] for k in ("fim_pad", "fim_rep", "fim_sep") if vocab.special.get(k) is not None}
    for text in EOG_TEXTS:
        tid = vocab.token_to_id.get(text)
        if tid is not None:
            eog.add(tid)
            _mark_control(vocab, tid)
    for text in _ALWAYS_RENDERED:
        tid = vocab.token_to_id.get(text)
        if tid is not None:
            vocab.attrs[tid] = int(TokenAttr.USER_DEFINED)
    eog.update(vocab.special[k] for k in ("eos", "eot", "eom") if vocab.special.get(k) is not None)
    _eog_exceptions(vocab, eog)
    vocab.eog_ids = frozenset(eog)
    _model_name_rules(vocab, str(metadata.get("general.name", "")).lower())


def _eog_exceptions(vocab: Vocab, eog: set[int]) -> None:
    """llama.cpp drops <|end|> (gpt-oss, solar-open) and </s> (gemma4, plamo) from the EOG set."""
    texts = {vocab.tokens[t]: t for t in eog if 0 <= t < vocab.n_tokens}
    has_call = "<|call|>" in texts or "<|calls|>" in texts
    if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
        eog.discard(texts["<|end|>"])
        vocab.attrs[texts["<|end|>"]] = int(TokenAttr.USER_DEFINED)
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(texts["</s>"])
        vocab.attrs[texts["</s>"]] = int(TokenAttr.NORMAL)


def _model_name_rules(vocab: Vocab, model_name: str) -> None:
    """Per-model lstrip/rstrip attributes that llama.cpp sets by name (not stored in GGUF)."""

    def set_attr(text: str, attr: TokenAttr, value: bool) -> None:
        tid = vocab.token_to_id.get(text)
        if tid is not None:
            vocab.attrs[tid] = vocab.attrs[tid] | int(attr) if value else vocab.attrs[tid] & ~int(attr)

    if any(s in vocab.pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")):
        set_attr("<mask>", TokenAttr.LSTRIP, True)
    elif "phi-3" in model_name or "phi3" in model_name:
        for tid in vocab.special_tokens():
            vocab.attrs[tid] |= int(TokenAttr.RSTRIP)
        set_attr("</s>", TokenAttr.RSTRIP, True)
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            set_attr(text, TokenAttr.RSTRIP, False)
    elif "modern-bert" in model_name:
        set_attr("[MASK]", TokenAttr.LSTRIP, True)
