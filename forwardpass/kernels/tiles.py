"""Quantized matrices repacked into 16-row tiles for the int8 dot-product kernels (layout: `csrc/tiles.c`).

`TileMatrix` holds one or more GGUF weights of one type, repacked at load (their rows stacked: a fused q|k|v or
gate|up needs no concatenated copy of the file's bytes); it is as large as the GGUF blocks it came from (0.5625
bytes a weight for Q4_0, 0.625 for Q4_1, ...), and once built, nothing reads the file's bytes again.

`TileLinear` is the CPU fast path's `Linear` for these types: `tile_matmul`, int8-quantized activations times the
tiles, bandwidth-bound for a few tokens and compute-bound (16 tokens per pass over a tile) for many; `dense`, a
bf16 GEMM on tiles dequantized exactly, for callers that want unquantized activations. The native forward step
(`kernels/native_decoder.py`) reads the same tiles.
"""

from __future__ import annotations

import ctypes
from typing import Callable

import torch
from gguf import GGMLQuantizationType as T

from ..gguf.dequant import block_info, f16, k_scale_min, le_fields, nibbles, shr
from ..gguf.weights import QuantWeight
from .gemm import gemm_in_chunks
from .native import NativeLibrary, TMat

ROWS = 16  # rows per tile
COLS = 32  # columns per tile
DENSE_CHUNK_BYTES = 4 << 20  # bf16 rows dequantized at once on the prefill path (cache-sized chunks)
SM_D, SM_DM, SM_K4, SM_K6 = 0, 1, 2, 3

# ggml type -> (code bits, scale mode, offset constant of mode D)
TILE_TYPES: dict[int, tuple[int, int, float]] = {
    T.Q4_0: (4, SM_D, -8.0),
    T.Q4_1: (4, SM_DM, 0.0),
    T.Q5_0: (5, SM_D, -16.0),
    T.Q5_1: (5, SM_DM, 0.0),
    T.Q8_0: (8, SM_D, -128.0),
    T.Q4_K: (4, SM_K4, 0.0),
    T.Q6_K: (6, SM_K6, 0.0),
}


def tile_supports(weight: QuantWeight, lib: NativeLibrary | None) -> bool:
    """Whether `weight` can live in tiles multiplied by `lib` (None: no native library, so no)."""
    n, k = weight.shape if len(weight.shape) == 2 else (0, 0)
    return (
        lib is not None
        and weight.raw.device.type == "cpu"
        and weight.ggml_type in TILE_TYPES
        and n % ROWS == 0
        and k % block_info(weight.ggml_type)[0] == 0
        and k % COLS == 0
    )


# ---- GGUF blocks -> integer codes (N, K) uint8 and the scale fields, per type ----


def codes_and_scales(weight: QuantWeight) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """codes (N, K) uint8 >= 0, and per-row scale fields: d/m (N, K/32) float32 (exact fp16 values), or the K-quant
    sub-scales (N, K/32 or K/16) and super-block scales (N, K/256)."""
    n, k = weight.shape
    _, type_size = block_info(weight.ggml_type)
    b = weight.raw.reshape(-1, type_size)
    t = weight.ggml_type
    if t == T.Q4_0:
        return nibbles(b[:, 2:], 16).reshape(n, k), {"d": f16(b[:, :2]).view(n, -1)}
    if t == T.Q4_1:
        return nibbles(b[:, 4:], 16).reshape(n, k), {"d": f16(b[:, :2]).view(n, -1), "m": f16(b[:, 2:4]).view(n, -1)}
    if t == T.Q5_0:
        q = nibbles(b[:, 6:], 16) | (le_fields(b[:, 2:6], 1) << 4)
        return q.reshape(n, k), {"d": f16(b[:, :2]).view(n, -1)}
    if t == T.Q5_1:
        q = nibbles(b[:, 8:], 16) | (le_fields(b[:, 4:8], 1) << 4)
        return q.reshape(n, k), {"d": f16(b[:, :2]).view(n, -1), "m": f16(b[:, 2:4]).view(n, -1)}
    if t == T.Q8_0:
        q = b[:, 2:].contiguous() ^ 0x80  # int8 q -> q + 128 as uint8
        return q.reshape(n, k), {"d": f16(b[:, :2]).view(n, -1)}
    if t == T.Q4_K:
        sc, mn = k_scale_min(b[:, 4:16])
        return nibbles(b[:, 16:], 32).reshape(n, k), {
            "sc": sc.reshape(n, -1),
            "mn": mn.reshape(n, -1),
            "dsb": f16(b[:, :2]).view(n, -1),
            "msb": -f16(b[:, 2:4]).view(n, -1),
        }
    if t == T.Q6_K:
        m = b.shape[0]
        lo = nibbles(b[:, :128], 64).reshape(m, 8, 32)
        hi = (shr(b[:, 128:192].reshape(m, 2, 32), 0, 8, 2) & 3).reshape(m, 8, 32)
        return (lo | (hi << 4)).reshape(n, k), {
            "sc": b[:, 192:208].contiguous().view(torch.int8).reshape(n, -1),
            "dsb": f16(b[:, 208:210]).view(n, -1),
        }
    raise ValueError(f"{weight.name}: no tile layout for ggml type {t}")


def _tiled(x: torch.Tensor, per_tile: int) -> torch.Tensor:
    """(N, F) per-row fields, F = tiles_along_k * per_tile -> (N/16, F/per_tile, per_tile*16) in tile order."""
    n, f = x.shape
    return x.view(n // ROWS, ROWS, f // per_tile, per_tile).permute(0, 2, 3, 1).reshape(n // ROWS, f // per_tile, -1)


def _pack(codes: torch.Tensor, fields: dict[str, torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    n, k = codes.shape
    nt, g = n // ROWS, k // COLS
    # (NT, 16 rows, G, 8 operands, 4 cols) -> (NT, G, 8, 16 * 4): operand o = cols 4o..4o+3 of the 16 rows
    ops = codes.view(nt, ROWS, g, 8, 4).permute(0, 2, 3, 1, 4).reshape(nt, g, 8, 64)
    out: dict[str, torch.Tensor] = {}
    if bits == 8:
        out["codes"] = ops.contiguous()
    else:
        out["codes"] = ((ops[:, :, 0::2] & 15) | ((ops[:, :, 1::2] & 15) << 4)).contiguous()
        if bits > 4:
            weights = (1 << torch.arange(8, dtype=torch.uint8)).view(1, 1, 8, 1)
            planes = []
            for bit in range(4, bits):
                b = (ops >> bit) & 1  # (NT, G, 8 operands, 64 bytes)
                planes.append((b * weights).sum(2, dtype=torch.uint8))  # byte j, bit o: operand o's byte j
            out["planes"] = torch.stack(planes, dim=2).contiguous()  # (NT, G, planes, 64)
    if "d" in fields:
        out["d16"] = _tiled(fields["d"].to(torch.float16), 1).contiguous()
        if "m" in fields:
            out["m16"] = _tiled(fields["m"].to(torch.float16), 1).contiguous()
    if "sc" in fields:
        per = fields["sc"].shape[1] // g  # 1 (Q4_K) or 2 (Q6_K) scales per tile
        out["sc"] = _tiled(fields["sc"].contiguous().view(torch.uint8), per).contiguous()
        if "mn" in fields:
            out["mn"] = _tiled(fields["mn"], 1).contiguous()
        out["dsb"] = _tiled(fields["dsb"].float(), 1).contiguous()
        if "msb" in fields:
            out["msb"] = _tiled(fields["msb"].float(), 1).contiguous()
    return out


CHUNK_ROWS_BYTES = 32 << 20  # bytes of codes expanded at once while repacking


class TileMatrix:
    """One or more weights (same type and K) stacked by rows, in the tile layout."""

    def __init__(
        self, weights: list[QuantWeight], lib: NativeLibrary, release: Callable[[torch.Tensor], None] | None = None
    ) -> None:
        """`lib` multiplies the tiles; `release(raw)` is called with each chunk of GGUF bytes once repacked (the
        loader drops its pages)."""
        self.lib = lib
        first = weights[0]
        if any(w.ggml_type != first.ggml_type or w.shape[1] != first.shape[1] for w in weights):
            raise ValueError(f"cannot stack {[w.name for w in weights]}: types or row lengths differ")
        self.name = "+".join(w.name for w in weights)
        self.ggml_type = first.ggml_type
        self.bits, self.smode, self.mconst = TILE_TYPES[first.ggml_type]
        self.n, self.k = sum(w.shape[0] for w in weights), first.shape[1]
        # every array is indexed by row tile first: chunks of rows are packed straight into their slice (no
        # list of parts and concatenated copy, which would double the peak for Gemma 3's 168 MB head)
        self.arrays: dict[str, torch.Tensor] = {}
        tile = 0
        for w in weights:
            step = max(ROWS, CHUNK_ROWS_BYTES // (4 * self.k) // ROWS * ROWS)
            for start in range(0, w.shape[0], step):
                raw = w.raw[start : start + step]
                part = QuantWeight(w.name, w.ggml_type, (raw.shape[0], self.k), raw)
                codes, fields = codes_and_scales(part)
                packed = _pack(codes, fields, self.bits)
                for key, value in packed.items():
                    if key not in self.arrays:
                        self.arrays[key] = torch.empty((self.n // ROWS, *value.shape[1:]), dtype=value.dtype)
                    self.arrays[key][tile : tile + value.shape[0]] = value
                tile += raw.shape[0] // ROWS
                del codes, fields, packed
                if release is not None:
                    release(raw)
        self.struct = TMat(
            self.n,
            self.k,
            self.bits,
            self.smode,
            self.mconst,
            *[
                self.arrays[key].data_ptr() if key in self.arrays else None
                for key in ("codes", "planes", "d16", "m16", "sc", "mn", "dsb", "msb")
            ],
        )

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() for a in self.arrays.values())

    def dequantize_rows(self, start: int, stop: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows start..stop (multiples of 16) -> (rows, K): float32, exactly the GGUF weights, or those values
        rounded to bf16 (`dtype=torch.bfloat16`, as `.to(torch.bfloat16)` would, without the float32 copy)."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"tiles dequantize to float32 or bfloat16, not {dtype}")
        out = torch.empty(stop - start, self.k, dtype=dtype)
        self.lib.tile_dequant(
            ctypes.byref(self.struct),
            start // ROWS,
            stop // ROWS,
            out.data_ptr(),
            int(dtype == torch.bfloat16),
            torch.get_num_threads(),
        )
        return out

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.dequantize_rows(0, self.n, dtype)


def tile_matmul(mats: list[TileMatrix], x: torch.Tensor) -> torch.Tensor:
    """x (T, K) -> (T, sum of the matrices' rows) float32: int8-quantized x times the tiles."""
    x = x.float().contiguous()
    t, k = x.shape
    n = sum(m.n for m in mats)
    y = torch.empty(t, n)
    q = torch.empty(t, k, dtype=torch.int8)
    dx, sx = torch.empty(t, k // COLS), torch.empty(t, k // COLS)
    s16 = torch.empty(t, k // 16, dtype=torch.int32)
    arr = (ctypes.POINTER(TMat) * len(mats))(*[ctypes.pointer(m.struct) for m in mats])
    mats[0].lib.tile_matmul(
        arr,
        len(mats),
        x.data_ptr(),
        t,
        q.data_ptr(),
        dx.data_ptr(),
        sx.data_ptr(),
        s16.data_ptr(),
        y.data_ptr(),
        n,
        torch.get_num_threads(),
    )
    return y


class TileLinear:
    """CPU `Linear` over a `TileMatrix`: the int8 tile kernel for decode rows, a bf16 GEMM for prompt rows."""

    def __init__(
        self,
        weights: list[QuantWeight],
        lib: NativeLibrary,
        bias: torch.Tensor | None = None,
        release: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        self.tiles = TileMatrix(weights, lib, release)
        self.bias = bias
        self.out_features, self.in_features = self.tiles.n, self.tiles.k
        self._mats = [self.tiles]

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        # The tile kernel at every size: from 16 tokens on it runs at ~550 GOPS on 2 cores here, faster than the
        # bf16 GEMM (~400 GFLOP/s) even before counting the dequantization; `dense` stays for callers that want
        # unquantized activations.
        y = tile_matmul(self._mats, x)
        return y if self.bias is None else y + self.bias

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, K) bf16 -> (T, N) bf16, dequantizing DENSE_CHUNK_BYTES of float32 rows at a time."""
        n, k = self.tiles.n, self.tiles.k
        return gemm_in_chunks(
            x,
            n,
            max(ROWS, DENSE_CHUNK_BYTES // (2 * k) // ROWS * ROWS),
            lambda a, b: self.tiles.dequantize_rows(a, b, torch.bfloat16),
        )


def self_test(lib: NativeLibrary) -> str | None:
    """Every tile type must dequantize bit-exactly and multiply close to the float32 product on random blocks;
    returns what failed, or None."""
    from ..gguf.dequant import dequantize  # noqa: PLC0415

    gen = torch.Generator().manual_seed(0)
    for ggml_type in TILE_TYPES:
        block_size, type_size = block_info(ggml_type)
        n, k = 32, 2 * max(block_size, 64)
        raw = torch.randint(0, 256, (n, k // block_size * type_size), dtype=torch.uint8, generator=gen)
        blocks = raw.view(-1, type_size)
        at = {T.Q6_K: (208,), T.Q4_K: (0, 2), T.Q4_1: (0, 2), T.Q5_1: (0, 2)}.get(ggml_type, (0,))
        for off in at:
            scales = torch.rand(blocks.shape[0], 1, generator=gen) * 0.01 + 0.001
            blocks[:, off : off + 2] = scales.to(torch.float16).view(torch.uint8)
        weight = QuantWeight("self-test", ggml_type, (n, k), raw)
        exact = dequantize(raw, ggml_type, (n, k))
        mat = TileMatrix([weight], lib)
        name = T(ggml_type).name
        if not torch.equal(mat.dequantize(), exact):
            return f"{name} dequantization"
        if not torch.equal(mat.dequantize(torch.bfloat16), exact.to(torch.bfloat16)):
            return f"{name} bf16 dequantization"
        x = torch.randn(5, k, generator=gen)
        ref = x @ exact.t()
        if not torch.allclose(tile_matmul([mat], x), ref, rtol=0.05, atol=0.05 * ref.abs().max().item()):
            return f"{name} matmul"
    return None
