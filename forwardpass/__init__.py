"""forwardpass: an LLM inference engine in Python.

The public surface: `LLM`, `SamplingParams`, the output types and the errors.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    ChatTemplateError,
    ContextLengthError,
    ForwardpassError,
    GGUFError,
    ModelNotFoundError,
    StructuredOutputError,
    TensorParallelError,
    TokenizerError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

_LAZY = {  # imported on first use, so `import forwardpass` (and the CLI's --help) stays fast
    "LLM": ("llm", "LLM"),
    "SamplingParams": ("sampling", "SamplingParams"),
    "StructuredOutputsParams": ("structured.params", "StructuredOutputsParams"),
    "RequestOutput": ("outputs", "RequestOutput"),
    "CompletionOutput": ("outputs", "CompletionOutput"),
    "GenerationStats": ("outputs", "GenerationStats"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'forwardpass' has no attribute {name!r}")


__all__ = [
    "LLM",
    "SamplingParams",
    "StructuredOutputsParams",
    "RequestOutput",
    "CompletionOutput",
    "GenerationStats",
    "ChatTemplateError",
    "ContextLengthError",
    "ForwardpassError",
    "GGUFError",
    "ModelNotFoundError",
    "StructuredOutputError",
    "TensorParallelError",
    "TokenizerError",
    "UnsupportedModelError",
]
