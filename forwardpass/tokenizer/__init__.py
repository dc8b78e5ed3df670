"""Tokenizers built from GGUF metadata: llama.cpp-compatible BPE and SPM, a streaming detokenizer, and a
sandboxed chat-template renderer."""

from .base import Tokenizer
from .bpe import BPETokenizer
from .chat_template import ChatTemplate
from .detokenizer import StreamingDetokenizer
from .load import TOKENIZERS, tokenizer_from_metadata
from .spm import SPMTokenizer

__all__ = [
    "BPETokenizer",
    "ChatTemplate",
    "SPMTokenizer",
    "StreamingDetokenizer",
    "TOKENIZERS",
    "Tokenizer",
    "tokenizer_from_metadata",
]
