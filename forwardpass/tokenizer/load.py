"""The tokenizer for a GGUF file, chosen by its ``tokenizer.ggml.model`` from a table of the implementations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import TokenizerError
from .base import Tokenizer
from .bpe import BPETokenizer
from .spm import SPMTokenizer
from .vocab import KEY

TOKENIZERS: dict[str, type[Tokenizer]] = {"gpt2": BPETokenizer, "llama": SPMTokenizer}


def tokenizer_from_metadata(metadata: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer for GGUF metadata (gpt2: BPE, llama: SPM).

    Raises TokenizerError for an unsupported model or inconsistent metadata."""
    model = metadata.get(KEY + "model")
    impl = TOKENIZERS.get(str(model))
    if impl is None:
        supported = ", ".join(sorted(TOKENIZERS))
        raise TokenizerError(f"unsupported tokenizer model {model!r} ({KEY}model); supported: {supported}")
    return impl.from_metadata(metadata)
