"""StreamingDetokenizer: deltas never split a character and always add up to the one-shot decode
(docs/reliability.md, whole characters)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tokenizer import tiny_bpe_metadata, tiny_spm_metadata

from forwardpass.gguf.reader import GGUFFile
from forwardpass.tokenizer import BPETokenizer, StreamingDetokenizer, Tokenizer, tokenizer_from_metadata
from forwardpass.tokenizer.bpe import BYTE_TO_CHAR

REPLACEMENT = "\ufffd"
FUZZ_EXAMPLES = int(os.environ.get("FORWARDPASS_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def smollm2(smollm2_path: str) -> Tokenizer:
    return tokenizer_from_metadata(GGUFFile(smollm2_path).metadata)


@pytest.fixture(scope="module")
def gemma3(gemma3_path: str) -> Tokenizer:
    return tokenizer_from_metadata(GGUFFile(gemma3_path).metadata)


def stream(tok: Tokenizer, ids: list[int], skip_special: bool = True) -> list[str]:
    detok = StreamingDetokenizer(tok, skip_special=skip_special)
    return [detok.add(t) for t in ids] + [detok.flush()]


def byte_tokens(tok: Tokenizer, data: bytes) -> list[int]:
    return [tok.vocab.token_to_id[f"<0x{b:02X}>"] for b in data]


@pytest.mark.parametrize("text,n_bytes", [("👍", 4), ("中", 3), ("é", 2)])
def test_tiny_byte_fallback_vocabulary(text: str, n_bytes: int) -> None:
    """Whole characters without a real model: an SPM vocabulary with only byte tokens for these characters."""
    tok = tokenizer_from_metadata(tiny_spm_metadata())
    ids = tok.encode("h" + text + "h")
    assert len(ids) == 2 + n_bytes
    deltas = stream(tok, ids)
    assert deltas[1 : 1 + n_bytes] == [""] * (n_bytes - 1) + [text]
    assert "".join(deltas) == tok.decode(ids, skip_special=True) == "h" + text + "h"


@pytest.mark.slow
def test_emoji_as_four_byte_tokens(gemma3: Tokenizer) -> None:
    ids = byte_tokens(gemma3, "👍".encode())  # F0 9F 91 8D
    assert len(ids) == 4
    deltas = stream(gemma3, ids)
    assert deltas == ["", "", "", "👍", ""]
    assert "".join(deltas) == gemma3.decode(ids, skip_special=True) == "👍"


@pytest.mark.slow
@pytest.mark.parametrize("char", ["中", "語", "é", "ß"])
def test_multibyte_characters_as_byte_tokens(gemma3: Tokenizer, char: str) -> None:
    data = char.encode()
    ids = byte_tokens(gemma3, data)
    assert len(ids) in (2, 3)
    deltas = stream(gemma3, ids)
    assert all(REPLACEMENT not in d for d in deltas)
    assert deltas[len(data) - 1] == char and "".join(deltas) == char


@pytest.mark.slow
def test_byte_fallback_from_encode(gemma3: Tokenizer) -> None:
    text = "rare \U0002ebf0 char 👍 and \U0001faa8 mixed with 中文 text"
    ids = gemma3.encode(text, add_bos=True)
    assert any(gemma3.vocab.attr(t) & 32 for t in ids), "the text should need byte-fallback tokens"
    deltas = stream(gemma3, ids)
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == gemma3.decode(ids, skip_special=True) == text


@pytest.mark.slow
def test_special_tokens_are_skipped_or_rendered(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("<|im_start|>user\nhi 👍<|im_end|>", special=True)
    assert "".join(stream(smollm2, ids, skip_special=True)) == "user\nhi 👍"
    assert "".join(stream(smollm2, ids, skip_special=False)) == "<|im_start|>user\nhi 👍<|im_end|>"


@pytest.mark.slow
def test_invalid_utf8_matches_one_shot_decode(gemma3: Tokenizer) -> None:
    # a lone continuation byte, a cut 3-byte sequence before ASCII, and a cut sequence at the very end
    ids = byte_tokens(gemma3, b"a\x80b\xe4\xb8c") + gemma3.encode("ok") + byte_tokens(gemma3, b"\xf0\x9f")
    deltas = stream(gemma3, ids)
    assert "".join(deltas) == gemma3.decode(ids, skip_special=True)
    assert deltas[-1] == REPLACEMENT  # only flush() turns the unfinished character into U+FFFD


unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def lossless(tok: Tokenizer, text: str) -> bool:
    """Whether the vocabulary can spell every byte of ``text`` (SmolLM2 lacks e.g. 0x04 and the 0xF1 lead byte,
    which llama.cpp, and so forwardpass, silently drops)."""
    if not isinstance(tok, BPETokenizer):
        return True
    return all(BYTE_TO_CHAR[b] in tok.vocab.token_to_id for b in text.encode())


@pytest.mark.slow
@pytest.mark.fuzz
@FUZZ
@given(text=unicode_text)
def test_streaming_equals_decode_on_random_text(smollm2: Tokenizer, gemma3: Tokenizer, text: str) -> None:
    for tok in (smollm2, gemma3):
        ids = tok.encode(text, add_bos=True)
        deltas = stream(tok, ids)
        assert "".join(deltas) == tok.decode(ids, skip_special=True)
        if lossless(tok, text):
            if REPLACEMENT not in text:
                assert all(REPLACEMENT not in d for d in deltas)
            if tok is smollm2:
                assert "".join(deltas) == text


@pytest.mark.slow
@pytest.mark.fuzz
@FUZZ
@given(data=st.data())
def test_streaming_equals_decode_on_random_ids(smollm2: Tokenizer, gemma3: Tokenizer, data: st.DataObject) -> None:
    for tok in (smollm2, gemma3):
        ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
        skip = data.draw(st.booleans())
        assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip_special=skip)


CLEAN_SPACES_TOKENS = ["Ġ", "'", "s", "m", "re", "ve", "t", "?", "!", ".", ",", "a", "Ġ'", "'s"]


@pytest.mark.fuzz
@settings(max_examples=2 * FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None)
@given(pieces=st.lists(st.sampled_from(CLEAN_SPACES_TOKENS), max_size=30))
def test_streaming_with_clean_spaces(pieces: list[str]) -> None:
    """gpt-2 style vocabularies clean up " ," and " 's" on decode; streaming must agree at every cut."""
    tok = tokenizer_from_metadata(tiny_bpe_metadata(extra=["re", "ve", "Ġ'", "'s"]))
    assert tok.vocab.clean_spaces
    ids = [tok.vocab.token_to_id[p] for p in pieces]
    assert "".join(stream(tok, ids)) == tok.decode(ids, skip_special=True)


def test_held_back_bytes_stay_bounded() -> None:
    """Work per token is O(1): however long the stream, the detokenizer holds back at most an incomplete character
    (3 bytes) and, per clean-up pass, the tail a later byte could still change (at most 4 bytes: every rule starts
    with a space and spans at most four), never a growing buffer that each token would walk again."""
    tok = tokenizer_from_metadata(tiny_bpe_metadata(extra=["re", "ve", "Ġ'", "'s"]))
    ids = tok.encode("Streaming text, one token at a time: 中文 👍 and more ' s ? I'm " * 50)
    detok = StreamingDetokenizer(tok)
    deltas = []
    for t in ids:
        deltas.append(detok.add(t))
        assert len(detok._decoder.getstate()[0]) <= 3
        assert all(len(pending) <= 4 for pending in detok._cleaner._pending)
    assert "".join(deltas) + detok.flush() == tok.decode(ids, skip_special=True)
