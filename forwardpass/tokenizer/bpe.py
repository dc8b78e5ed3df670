"""Byte-level BPE (``tokenizer.ggml.model = gpt2``), as llama.cpp's llm_tokenizer_bpe.

Words come from llama.cpp's regex pre-tokenizer (pretokenize.py); each word's UTF-8 bytes are mapped to
GPT-2's printable byte characters and merged by rank. The merging itself runs in Hugging Face ``tokenizers``
(a plain BPE model with no normalizer or pre-tokenizer of its own), which applies the same rule as llama.cpp:
lowest merge rank first, leftmost on ties.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models as hf_models

from ..errors import TokenizerError
from .base import Fragment, Tokenizer
from .pretokenize import RegexSplitter, spec_for
from .vocab import KEY, Vocab, load_vocab

logger = logging.getLogger(__name__)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (llama.cpp's unicode_byte_to_utf8_map)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# bytes.decode("latin-1") gives one character per byte; this maps them onto GPT-2's characters in one pass
_LATIN1_TO_GPT2 = {b: BYTE_TO_CHAR[b] for b in range(256)}


def byte_encode(word: str) -> str:
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_GPT2)


class BPETokenizer(Tokenizer):
    """llama.cpp-compatible byte-level BPE."""

    def __init__(self, vocab: Vocab, merges: list[str], regexes: tuple[str, ...], ignore_merges: bool) -> None:
        super().__init__(vocab)
        self._splitter = RegexSplitter(regexes)
        self._ignore_merges = ignore_merges
        self._model = HFTokenizer(self._build_model(vocab, merges))
        # Byte characters missing from the vocabulary: llama.cpp keeps them as symbols that no merge joins
        # and drops them at the end, so they split a word in two; HF would merge across them instead.
        missing = [c for c in BYTE_TO_CHAR if c not in vocab.token_to_id]
        self._barrier = re.compile("[" + re.escape("".join(missing)) + "]+") if missing else None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> BPETokenizer:
        spec = spec_for(metadata.get(KEY + "pre"))
        merges = metadata.get(KEY + "merges")
        if merges is None:
            raise TokenizerError(f"a BPE vocabulary needs {KEY}merges")
        vocab = load_vocab(
            metadata,
            spm=False,
            pre=str(metadata.get(KEY + "pre") or "default"),
            clean_spaces=spec.clean_spaces,
            add_bos_default=spec.add_bos,
        )
        return cls(vocab, list(merges), spec.regexes, spec.ignore_merges)

    def _build_model(self, vocab: Vocab, merges: list[str]) -> hf_models.BPE:
        pairs: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        dropped = 0
        get = vocab.token_to_id.get
        for merge in merges:
            # llama.cpp splits at the first space after the first character
            pos = merge.find(" ", 1)
            pair = (merge[:pos], merge[pos + 1 :]) if pos >= 0 else ("", "")
            if pair in seen:  # llama.cpp keeps the first rank of a repeated merge
                continue
            seen.add(pair)
            if get(pair[0]) is None or get(pair[1]) is None or get(pair[0] + pair[1]) is None:
                dropped += 1
                continue
            pairs.append(pair)
        if dropped:
            logger.warning("ignoring %d BPE merges whose parts or result are not in the vocabulary", dropped)
        try:
            return hf_models.BPE(vocab=dict(vocab.token_to_id), merges=pairs, ignore_merges=self._ignore_merges)
        except Exception as exc:  # tokenizers raises plain Exception subclasses for bad vocabularies
            raise TokenizerError(f"cannot build the BPE model: {exc}") from exc

    def _encode_fragments(self, fragments: list[Fragment], out: list[int]) -> None:
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                continue
            words = [byte_encode(w) for w in self._splitter.split(frag)]
            if self._barrier is not None:
                words = [part for w in words for part in self._barrier.split(w) if part]
            if words:
                out.extend(self._model.encode(words, is_pretokenized=True, add_special_tokens=False).ids)

    def _normal_piece(self, text: str) -> bytes:
        return _decode_text(text)


def _decode_text(text: str) -> bytes:
    """llama.cpp's llama_decode_text: GPT-2 characters back to bytes, unknown ones spelled out."""
    out = bytearray()
    for ch in text:
        b = CHAR_TO_BYTE.get(ch)
        if b is not None:
            out.append(b)
        else:
            utf8 = ch.encode("utf-8", "surrogatepass")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + text.encode("utf-8", "surrogatepass") + b"]"
    return bytes(out)
