"""Architectures by `general.architecture`: the model's own metadata picks the code that runs it."""

from __future__ import annotations

from typing import Any

from ..errors import GGUFError, UnsupportedModelError
from ..gguf.reader import GGUFFile
from ..gguf.weights import WeightStore
from .base import DecoderLM, LoadOptions
from .gemma3 import Gemma3LM
from .llama import LlamaLM
from .qwen2 import Qwen2LM
from .qwen3 import Qwen3LM

ARCHITECTURES: dict[str, type[DecoderLM]] = {cls.arch: cls for cls in (LlamaLM, Qwen2LM, Qwen3LM, Gemma3LM)}


def architecture_of(metadata: dict[str, Any]) -> type[DecoderLM]:
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError("missing metadata key 'general.architecture'")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"unsupported architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def load_model(gguf: GGUFFile, options: LoadOptions) -> DecoderLM:
    """Build the model `gguf` describes, strictly: every tensor expected, with its shape, and no others."""
    cls = architecture_of(gguf.metadata)
    config = cls.config_from_metadata(gguf.metadata)
    if options.parallel is not None:  # one tensor-parallel rank: its heads and FFN columns
        config = options.parallel.local_config(config)
        return cls(config, options.parallel.store(gguf, config), options)
    return cls(config, WeightStore(gguf), options)
