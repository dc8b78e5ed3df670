"""The llguidance tokenizer of a GGUF vocabulary: every token's bytes, straight from ``forwardpass.tokenizer``.

No Hugging Face tokenizer is involved: the trie llguidance builds its masks on is made of the same pieces the
detokenizer prints. Control and unknown tokens (``<|im_end|>``, ``<|endoftext|>``) are marked special (the 0xFF
prefix llguidance expects), so the text ``<|im_end|>`` in a JSON string can never be produced by one of them;
user-defined tokens (Qwen's ``<tool_call>``) keep their text, so a grammar's string literal ``"<tool_call>"``
accepts the single token the model was trained to emit.
"""

from __future__ import annotations

from typing import Any

from ..tokenizer import Tokenizer
from ..tokenizer.vocab import TokenAttr

SPECIAL = TokenAttr.CONTROL | TokenAttr.UNKNOWN
MARKER = b"\xff"


class _VocabWrapper:
    """What ``llguidance.LLTokenizer`` reads from a Python tokenizer (its ``TokenizerWrapper`` protocol)."""

    is_tokenizer_wrapper = True

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        n = tokenizer.vocab_size
        self.tokens = [tokenizer.token_to_bytes(i) for i in range(n)] + [b""] * max(0, vocab_size - n)
        self.special_token_ids = [i for i in range(n) if tokenizer.vocab.attr(i) & SPECIAL]
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id

    def __call__(self, text: Any) -> list[int]:
        """Plain-text tokenization (llguidance uses it for forced prefixes), never parsing special tokens."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._tokenizer.encode(text)


def build_lltokenizer(tokenizer: Tokenizer, vocab_size: int) -> Any:
    """An ``llguidance.LLTokenizer`` over ``vocab_size`` ids (the logits' width; ids past the GGUF's token list,
    if any, are empty and never allowed). The end-of-generation ids are the grammar's EOS: a finished
    document allows exactly those."""
    import llguidance

    eos = sorted(tokenizer.eog_ids) or ([tokenizer.eos_id] if tokenizer.eos_id is not None else None)
    return llguidance.LLTokenizer(_VocabWrapper(tokenizer, vocab_size), n_vocab=vocab_size, eos_token=eos)
