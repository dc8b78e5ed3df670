"""ModelConfig: the hyperparameters of a decoder-only transformer, read from GGUF metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import GGUFError


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    d_model: int
    n_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    rms_eps: float
    rope_dims: int
    # Per layer: attention window (0 = global), RoPE base and linear RoPE scale (positions are divided by it)
    sliding_window: tuple[int, ...] = ()
    rope_bases: tuple[float, ...] = ()
    rope_scales: tuple[float, ...] = ()
    attn_scale: float = 0.0  # 0 -> 1/sqrt(head_dim)
    embed_scale: float = 1.0
    final_logit_softcap: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "n_layers",
            "d_model",
            "n_ff",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "vocab_size",
            "context_length",
            "rope_dims",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise GGUFError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise GGUFError(
                f"model config: head_count {self.n_heads} is not a multiple of head_count_kv {self.n_kv_heads}"
            )
        if self.rope_dims > self.head_dim or self.rope_dims % 2:
            raise GGUFError(
                f"model config: rope dimension_count {self.rope_dims} must be even and <= head dim {self.head_dim}"
            )
        if not (math.isfinite(self.rms_eps) and self.rms_eps > 0):
            raise GGUFError(f"model config: rms epsilon must be positive, got {self.rms_eps}")
        if not len(self.sliding_window) == len(self.rope_bases) == len(self.rope_scales) == self.n_layers:
            raise GGUFError("model config: per-layer window and rope base lists must have one entry per layer")

    @property
    def scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)


class MetadataView:
    """Typed access to `{arch}.*` metadata keys, with errors that name the missing or mistyped key."""

    def __init__(self, metadata: dict[str, Any], arch: str) -> None:
        self.metadata = metadata
        self.arch = arch

    def _get(self, key: str, default: Any, kinds: tuple[type, ...]) -> Any:
        full = key if key.startswith(("general.", "tokenizer.")) else f"{self.arch}.{key}"
        if full not in self.metadata:
            if default is _REQUIRED:
                raise GGUFError(f"missing metadata key {full!r}")
            return default
        value = self.metadata[full]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise GGUFError(f"metadata key {full!r} has type {type(value).__name__}, expected a number")
        return value

    def int(self, key: str, default: Any = None) -> int:
        default = _REQUIRED if default is None else default
        return int(self._get(key, default, (int,)))

    def float(self, key: str, default: Any = None) -> float:
        default = _REQUIRED if default is None else default
        return float(self._get(key, default, (int, float)))

    def raw(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{key}", default)


_REQUIRED = object()


def vocab_size_of(metadata: dict[str, Any], arch: str) -> int:
    """`{arch}.vocab_size` when present, else the length of the token list."""
    if f"{arch}.vocab_size" in metadata:
        return int(metadata[f"{arch}.vocab_size"])
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise GGUFError(f"cannot tell the vocabulary size: no {arch}.vocab_size and no tokenizer.ggml.tokens")
    return len(tokens)
