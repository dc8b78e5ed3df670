"""The Tokenizer interface, the special-token partition and detokenization shared by BPE and SPM.

Semantics follow llama.cpp's llama_tokenize / llama_detokenize (src/llama-vocab.cpp) so that forwardpass
feeds a model the exact ids llama.cpp would, for the same GGUF file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import TokenizerError
from .vocab import TokenAttr, Vocab, text_bytes

_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale, used by llama.cpp's lstrip/rstrip
_RAW_TEXT = int(TokenAttr.CONTROL | TokenAttr.UNKNOWN | TokenAttr.USER_DEFINED)  # rendered as their text
_HIDDEN_UNLESS_SPECIAL = int(TokenAttr.CONTROL | TokenAttr.UNKNOWN)

Fragment = str | int  # raw text still to tokenize, or a special token id


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary. Build it with `tokenizer.load.tokenizer_from_metadata`."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._special_ids = vocab.special_tokens()
        self._special_buckets = self._bucket_special_tokens()
        self._pieces: list[bytes | None] = [None] * vocab.n_tokens

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        raise NotImplementedError

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.vocab.n_tokens

    @property
    def bos_id(self) -> int | None:
        return self.vocab.special.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self.vocab.special.get("eos")

    @property
    def eog_ids(self) -> frozenset[int]:
        """Ids that end generation: eos, eot, eom and llama.cpp's by-text list (<|im_end|>, <end_of_turn>, ...)."""
        return self.vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        """Whether encode(add_bos=True) prepends BOS (the model's add_bos_token, or llama.cpp's default)."""
        return self.vocab.add_bos

    @property
    def bos_token(self) -> str:
        return self.vocab.tokens[self.bos_id] if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self.vocab.tokens[self.eos_id] if self.eos_id is not None else ""

    def is_special(self, token_id: int) -> bool:
        """True for control and unknown tokens: the ones decode(skip_special=True) drops."""
        return bool(self.vocab.attr(token_id) & _HIDDEN_UNLESS_SPECIAL)

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text``, as llama.cpp's llama_tokenize(text, add_special=add_bos, parse_special=special).

        ``add_bos`` adds BOS only if the model uses one (``add_bos``) and EOS if it asks for one
        (``add_eos_token``). ``special`` lets control tokens' text become those tokens; user-defined tokens
        always match.
        """
        ids: list[int] = []
        add = add_bos and self.vocab.add_bos
        if add:
            if self.bos_id is None:
                raise TokenizerError("the model asks for a BOS token but has none")
            ids.append(self.bos_id)
        self._encode_fragments(self._partition(text, special) if text else [], ids)
        if add_bos and self.vocab.add_eos:
            if self.eos_id is None:
                raise TokenizerError("the model asks for an EOS token but has none")
            ids.append(self.eos_id)
        return ids

    def _encode_fragments(self, fragments: list[Fragment], out: list[int]) -> None:
        raise NotImplementedError

    def _bucket_special_tokens(self) -> dict[str, list[int]]:
        """Special ids grouped by their first 4 characters, so a text skips the groups it cannot hold."""
        buckets: dict[str, list[int]] = {}
        for tid in self._special_ids:
            buckets.setdefault(self.vocab.tokens[tid][:4], []).append(tid)
        return buckets

    def _specials_in(self, text: str, parse_special: bool) -> list[int]:
        present: set[int] = set()
        tokens = self.vocab.tokens
        for prefix, ids in self._special_buckets.items():
            if prefix in text:
                present.update(t for t in ids if tokens[t] in text)
        if not parse_special:  # control and unknown tokens only match when parsing special tokens
            present = {t for t in present if not self.vocab.attr(t) & _HIDDEN_UNLESS_SPECIAL}
        return [t for t in self._special_ids if t in present]  # keep the longest-first order

    def _partition(self, text: str, parse_special: bool) -> list[Fragment]:
        """llama.cpp's tokenizer_st_partition: split out special tokens, one token at a time, longest first."""
        fragments: list[Fragment] = [text]
        for tid in self._specials_in(text, parse_special):
            token = self.vocab.tokens[tid]
            attr = self.vocab.attr(tid)
            out: list[Fragment] = []
            for frag in fragments:
                if isinstance(frag, int) or token not in frag:
                    out.append(frag)
                    continue
                _split_on(frag, token, tid, attr, out)
            fragments = out
        return fragments

    # ------------------------------------------------------------------ decoding
    def token_to_bytes(self, token_id: int) -> bytes:
        """The token's piece as raw bytes (special tokens rendered as their text)."""
        if not 0 <= token_id < self.vocab.n_tokens:
            raise TokenizerError(f"token id {token_id} is out of range [0, {self.vocab.n_tokens})")
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = self._piece(token_id)
        return piece

    def piece(self, token_id: int, skip_special: bool = False) -> bytes:
        """token_to_bytes, or b'' for control/unknown tokens when ``skip_special`` (llama_token_to_piece)."""
        piece = self.token_to_bytes(token_id)
        if skip_special and self.vocab.attr(token_id) & _HIDDEN_UNLESS_SPECIAL:
            return b""
        return piece

    def _piece(self, token_id: int) -> bytes:
        """llama.cpp's token_to_piece(special=True)."""
        text = self.vocab.tokens[token_id]
        attr = self.vocab.attr(token_id)
        if attr & _RAW_TEXT:
            return text_bytes(text)
        if attr & TokenAttr.NORMAL:
            return self._normal_piece(text)
        if attr & TokenAttr.BYTE:
            return bytes([int(text[3:5], 16)])  # <0xXX>
        return b""  # unused/undefined tokens render as nothing, like control tokens

    def _normal_piece(self, text: str) -> bytes:
        raise NotImplementedError

    def decode_bytes(self, ids: list[int], skip_special: bool = False) -> bytes:
        """llama.cpp's llama_detokenize(remove_special=False, unparse_special=not skip_special), as bytes."""
        out = bytearray()
        for i, tid in enumerate(ids):
            piece = self.piece(tid, skip_special)
            if i == 0 and self.vocab.add_space_prefix and piece[:1] == b" ":
                piece = piece[1:]  # the space the tokenizer added in front of the text
            out += piece
        return clean_spaces(bytes(out)) if self.vocab.clean_spaces else bytes(out)

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """The text of ``ids``; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", "replace")


def _split_on(frag: str, token: str, tid: int, attr: int, out: list[Fragment]) -> None:
    """Split every occurrence of ``token`` out of ``frag`` (honouring the token's lstrip/rstrip)."""
    pos = 0
    while True:
        match = frag.find(token, pos)
        if match < 0:
            break
        left = frag[pos:match]
        if attr & TokenAttr.LSTRIP:
            left = left.rstrip(_C_SPACE)
        if left:
            out.append(left)
        out.append(tid)
        pos = match + len(token)
        if attr & TokenAttr.RSTRIP:
            while pos < len(frag) and frag[pos] in _C_SPACE:
                pos += 1
    if pos < len(frag):
        out.append(frag[pos:])


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces (three passes over the bytes, see llama_detokenize)."""
    for clean in CLEAN_SPACES_PASSES:
        text = clean(text)
    return text


def _clean_pass1(t: bytes) -> bytes:
    # " ?", " !", " .", " ," -> drop the space
    out = bytearray(t[:1])
    for i in range(1, len(t)):
        if t[i - 1] == 0x20 and t[i] in b"?!.,":
            out.pop()
        out.append(t[i])
    return bytes(out)


def _clean_pass2(t: bytes) -> bytes:
    # " ' " -> "'"
    buf = bytearray(t)
    out = bytearray(buf[:1])
    i = 1
    while i < len(buf):
        x = buf[i]
        if x == 0x27 and i + 1 < len(buf) and buf[i - 1] == 0x20 and buf[i + 1] == 0x20:
            out.pop()
            i += 1
            buf[i] = 0  # llama.cpp overwrites the skipped space, which the next step then sees
        out.append(x)
        i += 1
    return bytes(out)


def _clean_pass3(t: bytes) -> bytes:
    # " 's", " 'm", " 're", " 've" -> drop the space
    out = bytearray(t[:1])
    n = len(t)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm" or (i + 2 < n and (x1, t[i + 2]) in ((0x72, 0x65), (0x76, 0x65))):
                out.pop()
        out.append(x)
    return bytes(out)


CLEAN_SPACES_PASSES = (_clean_pass1, _clean_pass2, _clean_pass3)
