"""Dequantize GGUF tensor data with torch: one small function per GGML type, vectorized over blocks.

Every dequantizer maps ``(n_blocks, type_size) uint8 -> (n_blocks, block_size) float32`` with torch ops only,
so the same code runs on CPU and CUDA tensors. The results are bit-exact with ``gguf.quants.dequantize``: the
integer unpacking is exact by construction, and the float32 arithmetic is done in the same order as gguf-py's
numpy code (``d * sc`` before ``d * q``, and so on), since float multiplication is not associative.

Multi-byte fields are little-endian (as GGUF stores them); we view them on a little-endian host.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from forwardpass.errors import GGUFError, UnsupportedModelError

T = GGMLQuantizationType

# The 16 non-linear levels shared by IQ4_NL and IQ4_XS (gguf-py's IQ4_NL.kvalues, kvalues_iq4nl in ggml).
IQ4_NL_KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"unknown GGML type {ggml_type}"


def block_info(ggml_type: int) -> tuple[int, int]:
    """Return ``(block_size, type_size)``: elements per block and bytes per block of a GGML type."""
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise UnsupportedModelError(f"{_type_name(ggml_type)} has no known block layout") from None


# ---------------------------------------------------------------------------------------------------------
# Unpacking helpers (exact integer work)
# ---------------------------------------------------------------------------------------------------------


def f16(b: torch.Tensor) -> torch.Tensor:
    """``(n, 2) uint8`` little-endian fp16 field -> ``(n, 1) float32`` (exact widening)."""
    # view() needs a contiguous last dim; column slices of the blocks are strided.
    return b.contiguous().view(torch.float16).float()


def shr(x: torch.Tensor, start: int, stop: int, step: int) -> torch.Tensor:
    """``x[..., None, :] >> s`` for each shift ``s`` in ``range(start, stop, step)``: ``(..., k) -> (..., n_s, k)``.

    This is gguf-py's ``x.reshape(..., 1, k) >> shifts.reshape(n_s, 1)``, which fixes the element order.
    """
    shifts = torch.arange(start, stop, step, dtype=torch.uint8, device=x.device)
    return x.unsqueeze(-2) >> shifts.view(-1, 1)


def le_fields(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Split each byte into ``8 // bits`` fields, lowest bits first: ``(n, k) -> (n, k * 8 // bits)``.

    Reading bytes in order and bits from the lowest up is the same as shifting the little-endian integer the
    bytes encode, which is how gguf-py unpacks ``qh`` (uint32) and ``scales_h`` (uint16); this avoids torch's
    thin support for unsigned 16/32-bit integers.
    """
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=x.device)
    return ((x.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(x.shape[0], -1)


def nibbles(qs: torch.Tensor, group: int) -> torch.Tensor:
    """Unpack 4-bit quants as ggml lays them out: each run of ``group`` bytes holds ``group`` elements in its
    low nibbles followed by ``group`` in its high nibbles. ``(n, k) -> (n, 2k)`` in 0..15."""
    n = qs.shape[0]
    return (shr(qs.reshape(n, -1, group), 0, 8, 4) & 0x0F).reshape(n, -1)


@functools.lru_cache(maxsize=None)
def _iq4_levels(device: torch.device) -> torch.Tensor:
    """The IQ4 level table on ``device``, built once per device (no host-to-device copy per call)."""
    return torch.tensor(IQ4_NL_KVALUES, dtype=torch.float32, device=device)


def k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte 6-bit scales/mins of Q4_K and Q5_K: ``(n, 12) -> ((n, 8), (n, 8))`` in 0..63.

    Bytes 0-3 hold the low 6 bits of scales 0-3 (top 2 bits: high bits of scales 4-7), bytes 4-7 the same for
    the mins, bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble).
    """
    d, m, m_d = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


# ---------------------------------------------------------------------------------------------------------
# Float types
# ---------------------------------------------------------------------------------------------------------


def dequant_f32(blocks: torch.Tensor) -> torch.Tensor:
    """F32: ``(n, 4) -> (n, 1)``, a reinterpretation of the bytes."""
    # Copy, so the result never aliases (possibly memory-mapped) file bytes, like every other type.
    return blocks.contiguous().view(torch.float32).clone()


def dequant_f16(blocks: torch.Tensor) -> torch.Tensor:
    """F16: ``(n, 2) -> (n, 1)``."""
    return f16(blocks)


def dequant_bf16(blocks: torch.Tensor) -> torch.Tensor:
    """BF16: ``(n, 2) -> (n, 1)``; the bf16 bits are the top half of the float32 bits (as gguf-py does it)."""
    return (blocks.contiguous().view(torch.int16).to(torch.int32) << 16).view(torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Legacy 32-element block types
# ---------------------------------------------------------------------------------------------------------


def dequant_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_0: ``[d: f16][qs: 16 B]`` -> ``d * (q - 8)``. ``(n, 18) -> (n, 32)``."""
    d, qs = torch.split(blocks, [2, 16], dim=1)
    q = nibbles(qs, 16).float() - 8  # (n, 32); small ints, exact in float32
    return f16(d) * q


def dequant_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_1: ``[d: f16][m: f16][qs: 16 B]`` -> ``d * q + m``. ``(n, 20) -> (n, 32)``."""
    d, m, qs = torch.split(blocks, [2, 2, 16], dim=1)
    q = nibbles(qs, 16).float()  # (n, 32)
    return f16(d) * q + f16(m)


def _q5_quants(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """5-bit quants: low nibbles from ``qs`` (16 B), bit 4 of element i is bit i of ``qh`` (a LE uint32).
    ``-> (n, 32)`` in 0..31."""
    return nibbles(qs, 16) | (le_fields(qh, 1) << 4)


def dequant_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_0: ``[d: f16][qh: 4 B][qs: 16 B]`` -> ``d * (q - 16)``. ``(n, 22) -> (n, 32)``."""
    d, qh, qs = torch.split(blocks, [2, 4, 16], dim=1)
    q = _q5_quants(qh, qs).float() - 16
    return f16(d) * q


def dequant_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_1: ``[d: f16][m: f16][qh: 4 B][qs: 16 B]`` -> ``d * q + m``. ``(n, 24) -> (n, 32)``."""
    d, m, qh, qs = torch.split(blocks, [2, 2, 4, 16], dim=1)
    q = _q5_quants(qh, qs).float()
    return f16(d) * q + f16(m)


def dequant_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q8_0: ``[d: f16][qs: 32 x int8]`` -> ``q * d``. ``(n, 34) -> (n, 32)``."""
    d, qs = torch.split(blocks, [2, 32], dim=1)
    return qs.contiguous().view(torch.int8).float() * f16(d)


def dequant_iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    """IQ4_NL: Q4_0's layout, but each nibble indexes a non-linear level table. ``(n, 18) -> (n, 32)``."""
    d, qs = torch.split(blocks, [2, 16], dim=1)
    levels = _iq4_levels(blocks.device)[nibbles(qs, 16).long()]  # (n, 32)
    return f16(d) * levels


# ---------------------------------------------------------------------------------------------------------
# K-quants and IQ4_XS: 256-element super-blocks
# ---------------------------------------------------------------------------------------------------------


def dequant_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q2_K: ``[scales: 16 B][qs: 64 B][d: f16][dmin: f16]``, 16 sub-blocks of 16.
    ``(d * sc) * q - (dmin * m)``. ``(n, 84) -> (n, 256)``."""
    n = blocks.shape[0]
    scales, qs, d, dmin = torch.split(blocks, [16, 64, 2, 2], dim=1)
    dl = (f16(d) * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (f16(dmin) * (scales >> 4).float()).reshape(n, 16, 1)
    # Each 32-byte half holds 4 crumbs per byte: (n, 2, 4, 32) -> (n, 16, 16).
    q = (shr(qs.reshape(n, 2, 32), 0, 8, 2) & 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, 256)


def dequant_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q3_K: ``[hmask: 32 B][qs: 64 B][scales: 12 B][d: f16]``, 16 sub-blocks of 16 with signed 6-bit
    scales; ``(d * (sc - 32)) * (q - 4 * !hbit)``. ``(n, 110) -> (n, 256)``."""
    n = blocks.shape[0]
    hmask, qs, scales, d = torch.split(blocks, [32, 64, 12, 2], dim=1)
    # Scale j: low 4 bits from byte j % 8 (low nibble for j < 8), high 2 bits from byte 8 + j % 4 at bit 2*(j//4).
    lo = shr(scales[:, :8], 0, 8, 4).reshape(n, 16)
    hi = shr(scales[:, 8:], 0, 8, 2).reshape(n, 16)
    sc = ((lo & 0x0F) | ((hi & 0x03) << 4)).float() - 32
    dl = (f16(d) * sc).reshape(n, 16, 1)
    ql = (shr(qs.reshape(n, 2, 32), 0, 8, 2) & 3).reshape(n, 16, 16)
    qh = (shr(hmask, 0, 8, 1) & 1).reshape(n, 16, 16)
    # A set hmask bit means "no offset"; a clear one subtracts 4.
    q = ql.float() - ((qh ^ 1) << 2).float()
    return (dl * q).reshape(n, 256)


def dequant_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_K: ``[d: f16][dmin: f16][scales: 12 B][qs: 128 B]``, 8 sub-blocks of 32.
    ``(d * sc) * q - (dmin * m)``. ``(n, 144) -> (n, 256)``."""
    n = blocks.shape[0]
    d, dmin, scales, qs = torch.split(blocks, [2, 2, 12, 128], dim=1)
    sc, mn = k_scale_min(scales)
    dl = (f16(d) * sc.float()).reshape(n, 8, 1)
    ml = (f16(dmin) * mn.float()).reshape(n, 8, 1)
    q = nibbles(qs, 32).reshape(n, 8, 32).float()
    return (dl * q - ml).reshape(n, 256)


def dequant_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_K: ``[d: f16][dmin: f16][scales: 12 B][qh: 32 B][qs: 128 B]``; Q4_K plus a 5th bit: bit j of
    ``qh[i]`` belongs to element i of sub-block j. ``(n, 176) -> (n, 256)``."""
    n = blocks.shape[0]
    d, dmin, scales, qh, qs = torch.split(blocks, [2, 2, 12, 32, 128], dim=1)
    sc, mn = k_scale_min(scales)
    dl = (f16(d) * sc.float()).reshape(n, 8, 1)
    ml = (f16(dmin) * mn.float()).reshape(n, 8, 1)
    ql = nibbles(qs, 32).reshape(n, 8, 32)
    qhi = shr(qh, 0, 8, 1) & 1  # (n, 8, 32)
    q = (ql | (qhi << 4)).float()
    return (dl * q - ml).reshape(n, 256)


def dequant_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q6_K: ``[ql: 128 B][qh: 64 B][scales: 16 x int8][d: f16]``, 16 sub-blocks of 16.
    ``(d * sc) * (q - 32)``. ``(n, 210) -> (n, 256)``."""
    n = blocks.shape[0]
    ql, qh, scales, d = torch.split(blocks, [128, 64, 16, 2], dim=1)
    dl = (f16(d) * scales.contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    lo = nibbles(ql, 64).reshape(n, 8, 32)
    hi = (shr(qh.reshape(n, 2, 32), 0, 8, 2) & 3).reshape(n, 8, 32)
    q = (lo | (hi << 4)).reshape(n, 16, 16).float() - 32
    return (dl * q).reshape(n, 256)


def dequant_iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    """IQ4_XS: ``[d: f16][scales_h: 2 B][scales_l: 4 B][qs: 128 B]``, 8 sub-blocks of 32 with signed 6-bit
    scales and IQ4_NL levels: ``(d * (sc - 32)) * level[q]``. ``(n, 136) -> (n, 256)``."""
    n = blocks.shape[0]
    d, scales_h, scales_l, qs = torch.split(blocks, [2, 2, 4, 128], dim=1)
    lo = le_fields(scales_l, 4)  # (n, 8): low nibble = sub-block 2i, high = 2i + 1
    hi = le_fields(scales_h, 2)  # (n, 8): 2 bits per sub-block of a LE uint16
    sc = (lo | (hi << 4)).float() - 32
    dl = (f16(d) * sc).reshape(n, 8, 1)
    levels = _iq4_levels(blocks.device)[nibbles(qs, 16).long()].reshape(n, 8, 32)
    return (dl * levels).reshape(n, 256)


DEQUANTIZERS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    T.F32: dequant_f32,
    T.F16: dequant_f16,
    T.BF16: dequant_bf16,
    T.Q4_0: dequant_q4_0,
    T.Q4_1: dequant_q4_1,
    T.Q5_0: dequant_q5_0,
    T.Q5_1: dequant_q5_1,
    T.Q8_0: dequant_q8_0,
    T.Q2_K: dequant_q2_k,
    T.Q3_K: dequant_q3_k,
    T.Q4_K: dequant_q4_k,
    T.Q5_K: dequant_q5_k,
    T.Q6_K: dequant_q6_k,
    T.IQ4_NL: dequant_iq4_nl,
    T.IQ4_XS: dequant_iq4_xs,
}


def dequantize(raw: torch.Tensor, ggml_type: int, shape: tuple[int, ...], name: str = "?") -> torch.Tensor:
    """Dequantize the raw bytes of a whole tensor to float32.

    Args:
        raw: uint8 bytes of the tensor, any shape (flattened in row-major order), on any device.
        ggml_type: a ``gguf.GGMLQuantizationType`` value.
        shape: the tensor's shape in torch order (the last dim is the contiguous row).
        name: the tensor's name, for error messages.

    Returns:
        A float32 tensor of ``shape`` on ``raw``'s device, bit-exact with ``gguf.quants.dequantize``.

    Raises:
        UnsupportedModelError: ``ggml_type`` has no dequantizer.
        GGUFError: the row length is not a whole number of blocks, or the byte count does not match ``shape``.
    """
    fn = DEQUANTIZERS.get(ggml_type)
    if fn is None:
        raise UnsupportedModelError(f"tensor {name!r}: type {_type_name(ggml_type)} is not supported")
    if raw.dtype != torch.uint8:
        raise TypeError(f"tensor {name!r}: raw bytes must be torch.uint8, got {raw.dtype}")
    block_size, type_size = block_info(ggml_type)
    type_name = _type_name(ggml_type)
    row = shape[-1] if shape else 1
    if row % block_size != 0:
        raise GGUFError(
            f"tensor {name!r}: row length {row} is not a multiple of the {type_name} block size {block_size}"
        )
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    n_blocks = n_elements // block_size
    if raw.numel() != n_blocks * type_size:
        raise GGUFError(
            f"tensor {name!r}: {type_name} shape {tuple(shape)} needs {n_blocks * type_size} bytes, got {raw.numel()}"
        )
    blocks = raw.reshape(n_blocks, type_size)  # (n_blocks, type_size)
    return fn(blocks).reshape(shape)  # (n_blocks, block_size) -> shape
