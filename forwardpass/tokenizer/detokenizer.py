"""Streaming detokenization: text deltas per token that never split a character.

The concatenation of every delta plus ``flush()`` equals ``Tokenizer.decode(ids, skip_special)`` exactly. Work
per token is O(1) amortized: pieces are fed as bytes to an incremental UTF-8 decoder, which holds back an
incomplete multi-byte sequence (a byte-fallback emoji spread over four tokens) until it completes, and
replaces invalid bytes with U+FFFD exactly as the one-shot decode does.
"""

from __future__ import annotations

import codecs

from .base import CLEAN_SPACES_PASSES, Tokenizer


class StreamingDetokenizer:
    """Turn a stream of token ids into text deltas (see module docstring)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._cleaner = _StreamingCleaner() if tokenizer.vocab.clean_spaces else None

    def add(self, token_id: int) -> str:
        """Feed one token; return the text that became final (possibly '')."""
        piece = self.tokenizer.piece(token_id, self.skip_special)
        if self._first:
            self._first = False
            if self.tokenizer.vocab.add_space_prefix and piece[:1] == b" ":
                piece = piece[1:]  # as decode(): drop the space the tokenizer put in front of the text
        if self._cleaner is not None:
            piece = self._cleaner.feed(piece)
        return self._decoder.decode(piece) if piece else ""

    def flush(self) -> str:
        """End of stream: return whatever is held back (an incomplete character becomes U+FFFD)."""
        tail = self._cleaner.flush() if self._cleaner is not None else b""
        return self._decoder.decode(tail, final=True)


# What must not end an emitted prefix, per cleaning pass, so that a later byte cannot change its result.
# Every rule of llama.cpp's clean-up starts with a space and spans at most four bytes (" ?", " ' ", " 're").
def _unsafe1(buf: bytearray, p: int) -> bool:
    return buf[p - 1] == 0x20


def _unsafe2(buf: bytearray, p: int) -> bool:
    return buf[p - 1] in (0x20, 0x27)


def _unsafe3(buf: bytearray, p: int) -> bool:
    return buf[p - 1] in (0x20, 0x27) or (p >= 3 and buf[p - 3] == 0x20 and buf[p - 2] == 0x27)


class _StreamingCleaner:
    """llama.cpp's three clean-up passes applied incrementally, each holding back only an unsafe tail."""

    _PASSES = tuple(zip(CLEAN_SPACES_PASSES, (_unsafe1, _unsafe2, _unsafe3)))

    def __init__(self) -> None:
        self._pending = [bytearray() for _ in self._PASSES]

    def feed(self, data: bytes) -> bytes:
        for (clean, unsafe), pending in zip(self._PASSES, self._pending):
            pending += data
            p = len(pending)
            while p > 0 and unsafe(pending, p):
                p -= 1
            data = clean(bytes(pending[:p]))
            del pending[:p]
        return data

    def flush(self) -> bytes:
        data = b""
        for (clean, _), pending in zip(self._PASSES, self._pending):
            pending += data
            data = clean(bytes(pending))
            pending.clear()
        return data
