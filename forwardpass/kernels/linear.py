"""`Linear`: y = x @ W.T (+ b) for a weight that stays in its GGUF encoding.

Backends are picked per weight at load by `make_linear`:
- "reference": the weight dequantized to float32 once; exact math, the yardstick for every faster path.
- "dequant": the weight kept in GGUF bytes and dequantized on each call (any type, any device; slow).
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..gguf.weights import QuantWeight


class Linear(Protocol):
    in_features: int
    out_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, in_features) -> (T, out_features)."""
        ...


class DenseLinear:
    """A dense weight in `dtype`; with float32 this is the exact reference path."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight  # (out, in)
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x.to(self.weight.dtype), self.weight.t())
        return y if self.bias is None else y + self.bias


class DequantLinear:
    """Keeps the GGUF bytes; dequantizes on every call. Correct for every type, memory-light, slow."""

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.dequantize()
        y = torch.matmul(x.float(), w.t())
        return y if self.bias is None else y + self.bias


def make_linear(weight: QuantWeight, bias: torch.Tensor | None = None, *, mode: str = "dequant",
                device: torch.device | str = "cpu") -> Linear:
    """The fastest exact-enough `Linear` for this weight under `mode` ("reference" or "dequant")."""
    if bias is not None:
        bias = bias.to(device)
    if mode == "reference":
        return DenseLinear(weight.to(device).dequantize(), bias)
    if mode == "dequant":
        return DequantLinear(weight.to(device), bias)
    raise ValueError(f"unknown linear mode {mode!r}")
