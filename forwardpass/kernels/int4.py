"""Linears over `Int4Groups` (4-bit codes, a bf16 scale and zero per 32 weights: ``w = (q - 8) s + z``).

- `Int4Linear`: any device. Codes stored two per byte in row order; each call dequantizes to bf16 and runs
  one bf16 GEMM.
- `Int4PackLinear`: CPU. Codes in the layout of `torch.ops.aten._convert_weight_to_int4pack_for_cpu`; few
  tokens (decode) go through `_weight_int4pack_mm_for_cpu` (reads 0.625 bytes per weight, like Q4_1 itself);
  many tokens (prefill) run a bf16 GEMM on a weight dequantized just in time, which is compute-bound and faster
  there: from the GGUF bytes by the native C dequantizer when the caller passes one (`prefill`), else by
  unpacking the packed layout with torch ops (about 3x slower to dequantize). The kernel needs N % 16 == 0 and K % 32 == 0 (the
  caller checks N; K is always whole groups).

The packed layout (torch's AVX-512 build; checked at first use by `cpu_layout_known`): rows in blocks of 64,
each block stored k-major as (K, 32) bytes, byte j holding row j in its low nibble and row 32 + j in its high
nibble; a last block of 16, 32 or 48 rows holds rows 2i and 2i + 1 in the low and high nibbles of byte i.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .gemm import matmul_rows
from .repack import GROUP, Int4Groups

BLOCK_N = 64  # rows per block of the CPU packed layout
PACK_CHUNK_ROWS = 8192  # rows converted at once: the op wants int32 codes, 4 bytes per weight


def _affine_f32(scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 scale and ``zero - 8 scale`` from the bf16 scale and zero the kernel uses, so that dequantizing is
    ``w = q * scale + zero8``. (In-place float32 arithmetic with these: bf16 elementwise ops with broadcasting
    run about 4x slower on CPU.)"""
    s = scale.float()
    return s, zero.float() - 8 * s


class Int4Linear:
    """Any device: y = x @ W^T (+ bias) with W dequantized to bf16 on each call. x: (T, K) -> (T, N) bf16."""

    def __init__(self, groups: Int4Groups, bias: torch.Tensor | None = None) -> None:
        q = groups.q  # (N, K) uint8 codes
        self.packed = q[:, 0::2] | (q[:, 1::2] << 4)  # (N, K / 2): even k in the low nibble
        self.scale, self.zero = groups.scale.to(torch.bfloat16), groups.zero.to(torch.bfloat16)  # (N, K / 32)
        self.bias = bias
        self.out_features, self.in_features = q.shape

    def weight(self) -> torch.Tensor:
        """(N, K) bf16."""
        n, k = self.out_features, self.in_features
        q = torch.stack([self.packed & 15, self.packed >> 4], dim=-1).float()  # (N, K / 2, 2)
        s, z8 = _affine_f32(self.scale, self.zero)  # (N, K / 32) each
        w = q.view(n, k // GROUP, GROUP).mul_(s.unsqueeze(-1)).add_(z8.unsqueeze(-1))
        return w.view(n, k).to(torch.bfloat16)

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        y = matmul_rows(x.to(torch.bfloat16), self.weight().t())
        return y if self.bias is None else y + self.bias


def pack_int4_cpu(q: torch.Tensor) -> torch.Tensor:
    """(N, K) uint8 codes -> (N, K / 2) uint8 in the CPU kernel's layout, in chunks of whole 64-row blocks (the
    layout is block-local, so packing chunks and concatenating them equals packing the whole)."""
    chunks = [
        torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[i : i + PACK_CHUNK_ROWS].to(torch.int32), 1)
        for i in range(0, q.shape[0], PACK_CHUNK_ROWS)
    ]
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def unpack_int4_cpu_t(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of `pack_int4_cpu`, transposed: (N, K / 2) packed -> (K, N) uint8 codes (the GEMM wants W^T)."""
    main, tail = n - n % BLOCK_N, n % BLOCK_N
    parts = []
    if main:
        p = packed[:main].view(main // BLOCK_N, k, BLOCK_N // 2).transpose(0, 1)  # (K, NB, 32)
        parts.append(torch.cat([p & 15, p >> 4], dim=-1).view(k, main))  # low nibbles: rows 0-31, high: 32-63
    if tail:
        p = packed[main:].view(k, tail // 2)  # byte i: rows 2i (low) and 2i + 1 (high)
        parts.append(torch.stack([p & 15, p >> 4], dim=-1).view(k, tail))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


@functools.lru_cache(maxsize=None)
def cpu_layout_known() -> bool:
    """Whether this torch build packs int4 the way `unpack_int4_cpu_t` reads (AVX2-only builds use 32-row blocks)."""
    probe = torch.randint(
        0, 16, (BLOCK_N + 48, 2 * GROUP), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    unpacked = unpack_int4_cpu_t(pack_int4_cpu(probe), *probe.shape)
    return torch.equal(unpacked.t(), probe)


class Int4PackLinear:
    """CPU: `_weight_int4pack_mm_for_cpu` below `dense_min_tokens` tokens, a just-in-time bf16 GEMM from there on.

    `prefill`, if given, computes the GEMM path ((T, K) bf16 -> (T, N) bf16) from another copy of the weight,
    e.g. `NativeLinear.dense` on the file's bytes.
    """

    # Crossovers measured with scripts/bench_linear.py (2 threads, AVX512-BF16): the kernel holds ~160 GFLOP/s
    # at any T; the bf16 GEMM runs at ~300 after dequantizing (~0.15 ms per M weights natively, ~0.45 unpacking
    # here), so it wins from ~32 tokens with `prefill`, ~96 without.
    dense_min_tokens = 96
    dense_min_tokens_with_prefill = 32

    def __init__(
        self,
        groups: Int4Groups,
        bias: torch.Tensor | None = None,
        prefill: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.out_features, self.in_features = groups.q.shape
        if self.out_features % 16:
            raise ValueError(f"the CPU int4 kernel needs N % 16 == 0, got N = {self.out_features}")
        self.packed = pack_int4_cpu(groups.q)  # (N, K / 2) uint8
        scale, zero = groups.scale.to(torch.bfloat16), groups.zero.to(torch.bfloat16)
        self.scale_zero = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (K / 32, N, 2)
        self.bias = bias
        self.prefill = prefill
        self.can_dense = prefill is not None or cpu_layout_known()
        if prefill is not None:
            self.dense_min_tokens = self.dense_min_tokens_with_prefill
        elif not cpu_layout_known():
            self.dense_min_tokens = 1 << 62  # cannot unpack this build's layout: the kernel at every size

    def weight_t(self) -> torch.Tensor:
        """(K, N) bf16: W^T dequantized from the packed codes."""
        n, k = self.out_features, self.in_features
        q = unpack_int4_cpu_t(self.packed, n, k).float().view(k // GROUP, GROUP, n)
        s, z8 = _affine_f32(self.scale_zero[..., 0], self.scale_zero[..., 1])  # (K / 32, N) each
        return q.mul_(s.unsqueeze(1)).add_(z8.unsqueeze(1)).view(k, n).to(torch.bfloat16)

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        x = x.to(torch.bfloat16).contiguous()
        if (x.shape[0] >= self.dense_min_tokens) if prefill is None else (prefill and self.can_dense):
            y = self.prefill(x) if self.prefill is not None else torch.matmul(x, self.weight_t())
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scale_zero)  # (T, N) bf16
        return y if self.bias is None else y + self.bias
