"""`Linear`: y = x @ W.T (+ b) for a weight that stays in its GGUF encoding.

Backends are picked per weight at load by `make_linear`:
- "reference": the weight dequantized to float32 once; exact math, the yardstick for every faster path.
- "dequant": the weight kept in GGUF bytes and dequantized on each call (any type, any device; slow).
- "fast" (`fast_linear` says which backend per type and device): on CPU with a native library, the weights in
  16-row tiles multiplied with int8 dot products (`tiles.py`); elsewhere decode-sized calls read the quantized
  weight through torch's int4/int8 kernels on a repacked copy (bf16 activations) and prefill-sized calls run a
  bf16 GEMM on a weight dequantized just in time.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from gguf import GGMLQuantizationType

from ..gguf.weights import QuantWeight
from .choice import KernelChoice
from .gemm import matmul_rows
from .int4 import Int4Linear, Int4PackLinear
from .int8 import Int8GroupLinear, Int8Linear, Int8PackLinear
from .repack import FLOAT_TYPES, INT4_GROUPERS, INT8_GROUP_TYPES, to_bf16, to_int4_groups, to_int8_groups, to_int8_rows
from .tiles import TileLinear, tile_supports


class Linear(Protocol):
    in_features: int
    out_features: int

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        """x: (T, in_features) -> (T, out_features).

        `prefill` picks the kernel by the rows' role instead of by T: True for prompt tokens (a GEMM path), False
        for generated tokens (a decode kernel). Each kernel computes a row the same way whatever the other rows,
        so a token's result never depends on what else is in the batch. None: the fastest kernel for this T."""
        ...


class DenseLinear:
    """A dense weight in its dtype: float32 is the exact reference path, bf16 the fast path of float weights."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight  # (out, in)
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        y = matmul_rows(x.to(self.weight.dtype), self.weight.t())
        return y if self.bias is None else y + self.bias


class DequantLinear:
    """Keeps the GGUF bytes; dequantizes on every call. Correct for every type, memory-light, slow."""

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        w = self.weight.dequantize()
        y = matmul_rows(x.float(), w.t())
        return y if self.bias is None else y + self.bias


# Columns per requantized block of `Int8GroupLinear`'s CPU decode copy, by type (others: whole rows). A narrower
# block follows the group scales more closely, and each block is one more kernel call; the requantization matters
# most for Q8_0, whose own steps are the finest. Decode KL against the exact path (docs/benchmarks.md, "PyTorch
# fallback"), SmolLM2's Q8_0 head: 1.9e-3 whole rows, 1.1e-3 at 192, 8.4e-4 at 96 (7.8e-4 with the exact weights).
INT8_DECODE_BLOCK = {GGMLQuantizationType.Q8_0: 96}


def fast_linear(
    weight: QuantWeight,
    bias: torch.Tensor | None = None,
    release: Callable[[torch.Tensor], None] | None = None,
    kernels: KernelChoice = KernelChoice(),
) -> Linear:
    """The fast backend for `weight` (already on its device) under `kernels`, first match wins
    (scripts/bench_linear.py measures the choices):

    1. F32, F16, BF16: a dense bf16 copy.
    2. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K on a CPU with `kernels.native` (any of its instruction sets),
       N % 16 == 0: `TileLinear`, exact 16-row tiles multiplied with int8 dot products (the native step reads the
       same tiles).
    3. Q4_0, Q4_1, Q4_K on CPU, N % 16 == 0, with `kernels.int4_cpu`: `Int4PackLinear`, torch's int4 kernel on an
       exact repacking (up to bf16 scales).
    4. other Q4_0, Q4_1, Q4_K: `Int4Linear` (any device).
    5. Q5_0, Q5_1, Q8_0, Q6_K: `Int8GroupLinear` (any device), exact codes with per-group scales for the prompt;
       on CPU generated tokens read an int8 copy requantized per row (per block of 96 columns for Q8_0).
    6. every other type (Q2_K, Q3_K, Q5_K, IQ4_*): int8 per row (`Int8PackLinear` on CPU, `Int8Linear`
       elsewhere), a requantization whose error is at most half an int8 step of the row's max |w|.
    """
    cpu = weight.raw.device.type == "cpu"
    if weight.ggml_type in FLOAT_TYPES:
        return DenseLinear(to_bf16(weight), bias)
    native = kernels.native if cpu else None
    if tile_supports(weight, native):
        return TileLinear([weight], native, bias, release)
    if cpu and weight.ggml_type in INT4_GROUPERS and weight.shape[0] % 16 == 0 and kernels.int4_cpu:
        return Int4PackLinear(to_int4_groups(weight), bias)
    if weight.ggml_type in INT4_GROUPERS:
        return Int4Linear(to_int4_groups(weight), bias)
    if weight.ggml_type in INT8_GROUP_TYPES:
        return Int8GroupLinear(to_int8_groups(weight), bias, INT8_DECODE_BLOCK.get(weight.ggml_type))
    rows = to_int8_rows(weight)
    return Int8PackLinear(rows, bias) if cpu else Int8Linear(rows, bias)


def make_linear(
    weight: QuantWeight,
    bias: torch.Tensor | None = None,
    *,
    mode: str = "dequant",
    device: torch.device | str = "cpu",
    release: Callable[[torch.Tensor], None] | None = None,
    kernels: KernelChoice | None = None,
) -> Linear:
    """A `Linear` for this weight under `mode`: "reference" (exact float32), "dequant" or "fast" (with `kernels`:
    the default `KernelChoice()` has no native library, torch's kernels only)."""
    if bias is not None:
        bias = bias.to(device)
    if mode == "reference":
        return DenseLinear(weight.to(device).dequantize(), bias)
    if mode == "dequant":
        return DequantLinear(weight.to(device), bias)
    if mode == "fast":
        return fast_linear(weight.to(device), bias, release, kernels or KernelChoice())
    raise ValueError(f"unknown linear mode {mode!r}")
