"""Tokenizers built from GGUF metadata: llama.cpp-compatible BPE and SPM, a streaming detokenizer, and a
sandboxed chat-template renderer."""
from .base import Tokenizer
from .bpe import BPETokenizer
from .chat_template import ChatTemplate
from .detokenizer import StreamingDetokenizer
from .spm import SPMTokenizer

__all__ = ["BPETokenizer", "ChatTemplate", "SPMTokenizer", "StreamingDetokenizer", "Tokenizer"]
