"""GGUF blocks -> the two layouts the fast matmuls consume, converted once at load, a few rows at a time.

- `Int4Groups`: 4-bit codes with one (scale, zero) per 32 weights along a row, in the form torch's int4 kernels
  use: ``w = (q - 8) * scale + zero``. Q4_0, Q4_1 and Q4_K map onto it exactly (up to the bf16 rounding of
  scale and zero that the kernels apply):
    Q4_0 ``d * (q - 8)``          -> scale = d,       zero = 0
    Q4_1 ``d * q + m``            -> scale = d,       zero = m + 8 d
    Q4_K ``(d sc) * q - dmin mn`` -> scale = d sc,    zero = 8 d sc - dmin mn   (per 32-weight sub-block)
- `Int8Rows`: int8 codes with one scale per output row (``w = q * scale``), for the other types where the
  native kernels (`native.py`) are unavailable. This is a requantization: exact only for rows whose blocks share
  a scale, otherwise adding a rounding error of at most half a step (``max|w| / 254``): 0.8-1.9 % relative on
  the real models' Q5_0 / Q6_K / Q8_0 tensors (on Gemma 3's head alone a KL of 2e-3, 40 % of llama.cpp's).

Conversions run over chunks of rows so that the float32 intermediates stay small (about `CHUNK_BYTES`), whatever
the size of the tensor (Gemma 3's 262k-row output head).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from gguf import GGMLQuantizationType as T

from ..gguf.dequant import DEQUANTIZERS, block_info, f16, k_scale_min, nibbles
from ..gguf.weights import QuantWeight

GROUP = 32  # weights per (scale, zero) group in the int4 form; the kernels' qGroupSize
CHUNK_BYTES = 16 << 20  # float32 working set per conversion chunk


@dataclass
class Int4Groups:
    """``w[n, k] = (q[n, k] - 8) * scale[n, k // 32] + zero[n, k // 32]``."""

    q: torch.Tensor  # (N, K) uint8 in 0..15
    scale: torch.Tensor  # (N, K // 32) float32
    zero: torch.Tensor  # (N, K // 32) float32

    def dequantize(self) -> torch.Tensor:
        """(N, K) float32, with scale and zero rounded to bf16 as the kernels see them."""
        n, k = self.q.shape
        s, z = (t.to(torch.bfloat16).float().unsqueeze(-1) for t in (self.scale, self.zero))
        return ((self.q.float().view(n, k // GROUP, GROUP) - 8) * s + z).view(n, k)


@dataclass
class Int8Rows:
    """``w[n, k] = q[n, k] * scale[n]``; every scale is a bf16 value, so kernels taking bf16 scales are exact."""

    q: torch.Tensor  # (N, K) int8 in -127..127
    scale: torch.Tensor  # (N,) float32

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale.unsqueeze(1)


# ---- int4 groups: one function per exactly-mapped type, (n_blocks, type_size) uint8 -> codes, scale, zero ----


def _q4_0_groups(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d, qs = torch.split(blocks, [2, 16], dim=1)
    scale = f16(d)  # (n, 1)
    return nibbles(qs, 16), scale, torch.zeros_like(scale)


def _q4_1_groups(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d, m, qs = torch.split(blocks, [2, 2, 16], dim=1)
    scale = f16(d)
    return nibbles(qs, 16), scale, f16(m) + 8 * scale


def _q4_k_groups(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d, dmin, scales, qs = torch.split(blocks, [2, 2, 12, 128], dim=1)
    sc, mn = k_scale_min(scales)  # (n, 8) each: one per 32-weight sub-block
    scale = f16(d) * sc.float()
    return nibbles(qs, 32), scale, 8 * scale - f16(dmin) * mn.float()


INT4_GROUPERS: dict[int, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    T.Q4_0: _q4_0_groups,
    T.Q4_1: _q4_1_groups,
    T.Q4_K: _q4_k_groups,
}

FLOAT_TYPES = (T.F32, T.F16, T.BF16)


def _row_chunks(weight: QuantWeight, floats_per_row: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, raw rows) chunks of whole 64-row blocks, each about `CHUNK_BYTES` once expanded."""
    rows = weight.raw.shape[0]
    step = max(64, CHUNK_BYTES // (4 * floats_per_row) // 64 * 64)
    for start in range(0, rows, step):
        yield start, weight.raw[start : start + step]


def to_int4_groups(weight: QuantWeight) -> Int4Groups:
    """Q4_0 / Q4_1 / Q4_K -> `Int4Groups`, exactly (before the kernels' bf16 rounding of scale and zero)."""
    grouper = INT4_GROUPERS[weight.ggml_type]
    n, k = weight.shape
    _, type_size = block_info(weight.ggml_type)
    q = torch.empty(n, k, dtype=torch.uint8, device=weight.raw.device)
    scale = torch.empty(n, k // GROUP, device=weight.raw.device)
    zero = torch.empty_like(scale)
    for start, raw in _row_chunks(weight, k):
        rows = raw.shape[0]
        codes, s, z = grouper(raw.reshape(-1, type_size))
        q[start : start + rows] = codes.view(rows, k)
        scale[start : start + rows] = s.reshape(rows, -1)
        zero[start : start + rows] = z.reshape(rows, -1)
    return Int4Groups(q, scale, zero)


def _bf16_at_least(x: torch.Tensor) -> torch.Tensor:
    """The smallest bf16 value >= x (x >= 0), as float32: a scale that both is exact in bf16 and keeps |q| <= 127."""
    y = x.to(torch.bfloat16)
    up = (y.view(torch.int16) + 1).view(torch.bfloat16)  # the next bf16 above y >= 0 (no bf16 nextafter on CUDA)
    return torch.where(y.float() < x, up, y).float()


def _int8_round(w: torch.Tensor) -> Int8Rows:
    """(rows, K) float32 -> `Int8Rows`: each row rounded to 255 levels of its own max |w| (a bf16 scale)."""
    s = _bf16_at_least(w.abs().amax(dim=1) / 127)
    s = torch.where(s > 0, s, torch.ones_like(s))  # all-zero rows: any scale works
    return Int8Rows(torch.round(w / s.unsqueeze(1)).clamp_(-127, 127).to(torch.int8), s)


def to_int8_rows(weight: QuantWeight) -> Int8Rows:
    """Any type -> `Int8Rows`: each row dequantized exactly, then rounded to 255 levels of its own max |w|."""
    n, k = weight.shape
    block_size, type_size = block_info(weight.ggml_type)
    dequant = DEQUANTIZERS[weight.ggml_type]
    q = torch.empty(n, k, dtype=torch.int8, device=weight.raw.device)
    scale = torch.empty(n, device=weight.raw.device)
    for start, raw in _row_chunks(weight, k):
        rows = raw.shape[0]
        w = dequant(raw.reshape(-1, type_size)).view(rows, k)  # (rows, K) float32, exact
        block = _int8_round(w)
        q[start : start + rows], scale[start : start + rows] = block.q, block.scale
    return Int8Rows(q, scale)


@dataclass
class Int8Groups:
    """``w[n, k] = q[n, k] * scale[n, k // group] + zero[n, k // group]``: the GGUF weights exactly, for the 5-,
    6- and 8-bit types (codes 0..255; fp16 scales for Q5_0 / Q5_1 / Q8_0, whose d and m are fp16 already,
    float32 for Q6_K's d * sc)."""

    q: torch.Tensor  # (N, K) uint8
    scale: torch.Tensor  # (N, K // group)
    zero: torch.Tensor  # (N, K // group)
    group: int

    def dequantize_rows(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows start..stop -> (rows, K) float32, into `out` ((rows, K) float32) when given."""
        q = self.q[start:stop]
        n, k = q.shape
        s, z = self.scale[start:stop].float().unsqueeze(-1), self.zero[start:stop].float().unsqueeze(-1)
        groups = q.view(n, k // self.group, self.group)
        w = torch.mul(groups, s, out=None if out is None else out.view(n, k // self.group, self.group))
        return w.add_(z).view(n, k)

    def dequantize(self) -> torch.Tensor:
        return self.dequantize_rows(0, self.q.shape[0])


INT8_GROUP_TYPES = (T.Q5_0, T.Q5_1, T.Q8_0, T.Q6_K)


def requantize_blocks(groups: Int8Groups, width: int) -> list[Int8Rows]:
    """`Int8Groups` -> one `Int8Rows` per block of `width` columns (the last may be narrower): each row of each
    block rounded to int8 with its own bf16 scale, an error of at most half a step of that block's max |w| (a
    narrower block follows the group scales more closely: less error, more kernel calls)."""
    n, k = groups.q.shape
    bounds = [(a, min(k, a + width)) for a in range(0, k, width)]
    q = [torch.empty(n, b - a, dtype=torch.int8, device=groups.q.device) for a, b in bounds]
    scale = [torch.empty(n, device=groups.q.device) for _ in bounds]
    step = max(1, CHUNK_BYTES // (4 * k))
    for start in range(0, n, step):
        stop = min(n, start + step)
        w = groups.dequantize_rows(start, stop)  # (rows, K) float32, exact
        for i, (a, b) in enumerate(bounds):
            rows = _int8_round(w[:, a:b])
            q[i][start:stop], scale[i][start:stop] = rows.q, rows.scale
    return [Int8Rows(qi, si) for qi, si in zip(q, scale)]


def to_int8_groups(weight: QuantWeight) -> Int8Groups:
    """Q5_0 / Q5_1 / Q8_0 / Q6_K -> `Int8Groups`, exactly (the codes and scales the tile layout uses)."""
    from .tiles import SM_DM, SM_K6, TILE_TYPES, codes_and_scales  # noqa: PLC0415 (tiles imports native)

    n, k = weight.shape
    _, smode, mconst = TILE_TYPES[weight.ggml_type]
    group, dtype = (16, torch.float32) if smode == SM_K6 else (32, torch.float16)
    q = torch.empty(n, k, dtype=torch.uint8, device=weight.raw.device)
    scale = torch.empty(n, k // group, dtype=dtype, device=weight.raw.device)
    zero = torch.empty_like(scale)
    for start, raw in _row_chunks(weight, k):
        rows = raw.shape[0]
        codes, f = codes_and_scales(QuantWeight(weight.name, weight.ggml_type, (rows, k), raw))
        if smode == SM_K6:
            s = f["dsb"].repeat_interleave(16, dim=1) * f["sc"].float()  # (rows, K / 16), exact in float32
            z = -32 * s
        else:
            s = f["d"]
            z = f["m"] if smode == SM_DM else mconst * s  # -8 d, -16 d, -128 d: exact
        q[start : start + rows] = codes
        scale[start : start + rows] = s.to(dtype)
        zero[start : start + rows] = z.to(dtype)
    return Int8Groups(q, scale, zero, group)


def to_bf16(weight: QuantWeight) -> torch.Tensor:
    """F32 / F16 / BF16 matrices -> (N, K) bf16 (exact for BF16; float formats have no codes to keep)."""
    return weight.dequantize(torch.bfloat16)


def concat_rows(weights: list[QuantWeight], name: str) -> QuantWeight:
    """One weight whose rows are those of `weights` in order (same type and row length): fused projections
    (q|k|v, gate|up) run as one matmul, and the caller splits the output columns. Copies the bytes."""
    first = weights[0]
    if any(w.ggml_type != first.ggml_type or w.shape[1:] != first.shape[1:] for w in weights):
        raise ValueError(f"cannot fuse {[w.name for w in weights]}: types or row lengths differ")
    rows = sum(w.shape[0] for w in weights)
    return QuantWeight(name, first.ggml_type, (rows, *first.shape[1:]), torch.cat([w.raw for w in weights]))


def release_heap() -> None:
    """Give freed heap memory back to the OS (glibc only; a no-op elsewhere). Call once after loading: the repack
    temporaries leave ~200 MB of freed but still-mapped heap behind on SmolLM2, counted in RSS."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
    if trim is not None:
        trim(0)
