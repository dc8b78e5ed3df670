"""Linears over `Int8Rows` (int8 codes, one bf16 scale per output row).

- `Int8Linear`: any device. Each call converts the codes to bf16 (exact: |q| <= 127 fits bf16's 8-bit
  significand) and runs one bf16 GEMM, scaling the output columns afterwards: ``x @ (q s)^T = (x @ q^T) s``.
- `Int8PackLinear`: CPU. Few tokens (decode) go through `torch.ops.aten._weight_int8pack_mm`, which reads the
  int8 codes directly (the least memory traffic torch offers for 8-bit weights); many tokens (prefill) take the
  bf16 GEMM path above, which is compute-bound and several times faster there.
"""

from __future__ import annotations

import threading

import torch

from .gemm import gemm_in_chunks
from .repack import Int8Groups, Int8Rows, requantize_blocks

DENSE_CHUNK_BYTES = 8 << 20  # largest bf16 copy of the weight made at once: cache-sized (a 335 MB head in bf16)

_scratch = threading.local()  # per thread: the buffers a chunk is dequantized into, reused by every call


def _buffer(name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable scratch tensor of at least `numel` elements: a fresh multi-MB tensor per chunk costs its page
    faults every time (a decode step of SmolLM2's 8-bit head took 20-80 ms through fresh tensors, ~8 reused)."""
    key = (name, dtype, str(device))
    buf = getattr(_scratch, "bufs", {}).get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable inside inference mode and outside it
            buf = torch.empty(numel, dtype=dtype, device=device)
        _scratch.bufs = {**getattr(_scratch, "bufs", {}), key: buf}
    return buf[:numel]


class _JustInTimeLinear:
    """A Linear whose every call is its `dense` product on bf16 activations (+ bias)."""

    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        y = self.dense(x.to(torch.bfloat16))
        return y if self.bias is None else y + self.bias

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Int8Linear(_JustInTimeLinear):
    """y = (x @ q^T) * scale (+ bias), via a just-in-time bf16 copy of the codes. x: (T, K) -> (T, N) bf16."""

    def __init__(self, rows: Int8Rows, bias: torch.Tensor | None = None) -> None:
        self.q = rows.q  # (N, K) int8
        self.scale = rows.scale.to(torch.bfloat16)  # (N,), exact: repack chose bf16 scales
        self.bias = bias
        self.out_features, self.in_features = rows.q.shape

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, K) bf16 -> (T, N) bf16, in row chunks so the bf16 weight copy stays under DENSE_CHUNK_BYTES."""
        n, k = self.q.shape
        y = gemm_in_chunks(
            x, n, max(1, DENSE_CHUNK_BYTES // (2 * k)), lambda a, b: self.q[a:b].to(torch.bfloat16)
        )  # codes exact in bf16
        return y.mul_(self.scale)


class Int8PackLinear(Int8Linear):
    """CPU: `_weight_int8pack_mm` below `dense_min_tokens` tokens, the bf16 GEMM path from there on."""

    # Crossover measured with scripts/bench_linear.py (2 threads, AVX512-BF16): the int8 kernel (~110-140
    # GFLOP/s) is faster below ~8 tokens; from there the bf16 GEMM wins (converting the codes to bf16 is cheap).
    dense_min_tokens = 8

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        x = x.to(torch.bfloat16).contiguous()
        if (x.shape[0] >= self.dense_min_tokens) if prefill is None else prefill:
            y = self.dense(x)
        else:
            y = torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale)  # (T, N) bf16
        return y if self.bias is None else y + self.bias


class Int8GroupLinear(_JustInTimeLinear):
    """Any device: the 5-, 6- and 8-bit GGUF weights held exactly as uint8 codes with a scale and zero per group
    (`Int8Groups`), dequantized to bf16 just in time in row chunks for one bf16 GEMM. x: (T, K) -> (T, N) bf16.
    The exact fallback where neither the tile nor the native float kernels run (other CPUs, CUDA): 1.125 bytes
    a weight (1.5 for Q6_K) instead of the per-row requantization's 1, and no rounding of the weights but bf16's.

    On the CPU, generated tokens (decode) take `_weight_int8pack_mm` instead, which reads int8 codes directly
    (dequantizing the weight for every generated token cost 8 ms a step for SmolLM2's head alone): a second copy
    of the weight requantized to int8 per row and block of `decode_block` columns (`requantize_blocks`), one
    kernel call per block summed in float32. The prompt keeps the exact weights."""

    dense_min_tokens = 8  # as Int8PackLinear: below this many tokens (with prefill=None) the int8 kernel

    def __init__(self, groups: Int8Groups, bias: torch.Tensor | None = None, decode_block: int | None = None) -> None:
        """`decode_block`: columns per requantized block of the CPU decode copy (None: whole rows)."""
        self.groups = groups
        self.bias = bias
        self.out_features, self.in_features = groups.q.shape
        self.decode_block = decode_block or self.in_features
        self.blocks: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (first col, last col, q, bf16 scale)
        if groups.q.device.type == "cpu":
            start = 0
            for rows in requantize_blocks(groups, self.decode_block):
                stop = start + rows.q.shape[1]
                self.blocks.append((start, stop, rows.q, rows.scale.to(torch.bfloat16)))
                start = stop

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        decode = not ((x.shape[0] >= self.dense_min_tokens) if prefill is None else prefill)
        if not (decode and self.blocks):
            return super().__call__(x, prefill)
        x = x.to(torch.bfloat16)
        y = None
        for start, stop, q, scale in self.blocks:  # (T, N) per block; each row alone: batch-invariant
            part = torch.ops.aten._weight_int8pack_mm(x[:, start:stop].contiguous(), q, scale)
            y = part if len(self.blocks) == 1 else part.float() if y is None else y.add_(part)
        return y if self.bias is None else y + self.bias

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.groups.q.shape
        step = min(n, max(1, DENSE_CHUNK_BYTES // (4 * k)))
        f32 = _buffer("f32", step * k, torch.float32, x.device)
        b16 = _buffer("bf16", step * k, torch.bfloat16, x.device)

        def rows(a: int, b: int) -> torch.Tensor:  # consumed by the GEMM before the next chunk overwrites it
            w = self.groups.dequantize_rows(a, b, out=f32[: (b - a) * k].view(b - a, k))
            return b16[: (b - a) * k].view(b - a, k).copy_(w)

        return gemm_in_chunks(x, n, step, rows)
