"""SentencePiece-style tokenizer (``tokenizer.ggml.model = llama``), as llama.cpp's llm_tokenizer_spm.

Spaces become U+2581, the text is split into characters, and the adjacent pair whose concatenation is the
highest-scoring vocabulary entry is merged (leftmost on ties) until no pair is in the vocabulary. Symbols
left outside the vocabulary fall back to their bytes (<0xXX> tokens).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from ..errors import TokenizerError
from .base import Fragment, Tokenizer
from .vocab import Vocab, load_vocab, text_bytes

SPACE = "\u2581"  # ▁


class SPMTokenizer(Tokenizer):
    """llama.cpp-compatible SPM tokenizer with byte fallback."""

    def __init__(self, vocab: Vocab) -> None:
        super().__init__(vocab)
        # llama.cpp scores every token 0.0 when the file has no scores (merging is then leftmost-first)
        self._scores: list[float] = [0.0] * vocab.n_tokens if vocab.scores is None else vocab.scores.tolist()
        self._byte_ids = [self._byte_token(b) for b in range(256)]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> SPMTokenizer:
        return cls(load_vocab(metadata, spm=True))

    def _byte_token(self, b: int) -> int | None:
        """llama.cpp's byte_to_token: <0xXX>, else the byte itself as a token (only possible below 0x80,
        since a lone byte >= 0x80 is not a UTF-8 string)."""
        get = self.vocab.token_to_id.get
        tid = get(f"<0x{b:02X}>")
        return tid if tid is not None or b >= 0x80 else get(chr(b))

    def _encode_fragments(self, fragments: list[Fragment], out: list[int]) -> None:
        prev_special = True  # the text's start counts as "after a special token"
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.vocab.add_space_prefix and prev_special:
                frag = " " + frag
            self._tokenize(frag.replace(" ", SPACE), out)
            prev_special = False

    def _tokenize(self, text: str, out: list[int]) -> None:
        """Greedy best-score bigram merging over a linked list of symbols (llm_tokenizer_spm_session)."""
        n = len(text)
        if n == 0:
            return
        sym = list(text)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        get, scores = self.vocab.token_to_id.get, self._scores
        heap: list[tuple[float, int, int, int]] = []

        def try_add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            tid = get(sym[left] + sym[right])
            if tid is not None:
                # highest score first, then leftmost (llm_bigram_spm::comparator)
                heapq.heappush(heap, (-scores[tid], left, right, len(sym[left]) + len(sym[right])))

        for i in range(1, n):
            try_add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            lsym, rsym = sym[left], sym[right]
            if not lsym or not rsym or len(lsym) + len(rsym) != size:
                continue  # one side was merged since this pair was queued
            sym[left] = lsym + rsym
            sym[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            try_add(prv[left], left)
            try_add(left, nxt[left])
        i = 0
        while i != -1:
            self._emit(sym[i], out)
            i = nxt[i]

    def _emit(self, symbol: str, out: list[int]) -> None:
        tid = self.vocab.token_to_id.get(symbol)
        if tid is not None:
            out.append(tid)
            return
        for b in symbol.encode("utf-8", "surrogatepass"):
            byte_id = self._byte_ids[b]
            if byte_id is None:
                raise TokenizerError(f"the vocabulary has no byte-fallback token for 0x{b:02X}")
            out.append(byte_id)

    def _normal_piece(self, text: str) -> bytes:
        return text_bytes(text.replace(SPACE, " "))
