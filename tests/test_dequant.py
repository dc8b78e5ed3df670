"""forwardpass.gguf.dequant is bit-exact with gguf-py's reference dequantizers, on every supported type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from forwardpass.errors import GGUFError, UnsupportedModelError
from forwardpass.gguf.dequant import DEQUANTIZERS, block_info, dequantize

T = GGMLQuantizationType

# Byte offsets of the fp16 scale fields inside one block: random bytes there could be NaN/inf, so the tests
# overwrite them with chosen finite values.
FP16_FIELDS: dict[GGMLQuantizationType, tuple[int, ...]] = {
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q8_0: (0,),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
    T.IQ4_NL: (0,),
    T.IQ4_XS: (0,),
}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
SUPPORTED = (*FLOAT_TYPES, *FP16_FIELDS)
# Types gguf-py can quantize, so we can also check data that came from real floats.
QUANTIZABLE = (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]

# Scale kinds for the edge-case blocks: zero, negative, the largest finite fp16, the smallest subnormal.
EDGE_SCALES = (np.float16(0.0), np.float16(-0.0), np.float16(-0.0371), np.float16(65504.0), np.float16(6e-8))
EDGE_FILLS = (None, 0xFF, 0x00)  # quant bytes: random, all-max, all-zero


def _shape_for(qtype: GGMLQuantizationType) -> tuple[int, int]:
    """A few rows, each several blocks long (K-quant rows must be multiples of 256)."""
    block_size = GGML_QUANT_SIZES[qtype][0]
    return (4, 1024) if block_size == 256 else (3, 512)


def _random_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` small finite fp16 scales of both signs spanning several magnitudes, as ``(n, 2)`` uint8."""
    s = rng.standard_normal(n) * np.exp2(rng.integers(-14, 0, n))
    return s.astype(np.float16).view(np.uint8).reshape(n, 2)


def _finite_float_bits(rng: np.random.Generator, qtype: GGMLQuantizationType, n: int) -> np.ndarray:
    """Random F16/BF16 bit patterns with NaNs turned into infinities (NaN payloads are not our contract)."""
    exp_mask, mant_mask = (0x7C00, 0x03FF) if qtype == T.F16 else (0x7F80, 0x007F)
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    nan = ((bits & exp_mask) == exp_mask) & ((bits & mant_mask) != 0)
    bits[nan] &= np.uint16(~mant_mask & 0xFFFF)
    return bits.view(np.uint8)


def _random_tensor_bytes(rng: np.random.Generator, qtype: GGMLQuantizationType, shape: tuple[int, int]) -> np.ndarray:
    """Random raw bytes ``(rows, row_bytes)`` for a tensor of ``shape``, with finite scales; the first blocks
    cover every (quant fill x edge scale) combination."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = shape[0] * shape[1] // block_size
    if qtype == T.F32:
        blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)  # NaNs included: a plain copy
    elif qtype in FLOAT_TYPES:
        blocks = _finite_float_bits(rng, qtype, n_blocks).reshape(n_blocks, type_size)
    else:
        blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
        for off in FP16_FIELDS[qtype]:
            blocks[:, off : off + 2] = _random_scales(rng, n_blocks)
        edges = [(fill, scale) for fill in EDGE_FILLS for scale in EDGE_SCALES]
        for i, (fill, scale) in enumerate(edges[:n_blocks]):  # _shape_for() leaves room for all of them
            if fill is not None:
                blocks[i] = fill
            for off in FP16_FIELDS[qtype]:
                blocks[i, off : off + 2] = np.array([scale], dtype=np.float16).view(np.uint8)
    return blocks.reshape(shape[0], -1)


def _assert_bit_exact(ours: torch.Tensor, ref: np.ndarray) -> None:
    """Same shape, dtype and bits (so -0.0 vs 0.0 and NaN bit patterns count)."""
    assert ours.dtype == torch.float32
    assert tuple(ours.shape) == ref.shape
    ref_bits = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)).view(torch.int32)
    ours_bits = ours.cpu().contiguous().view(torch.int32)
    bad = (ours_bits != ref_bits).nonzero()
    assert bad.numel() == 0, (
        f"{bad.shape[0]} mismatches; first at {tuple(bad[0].tolist())}: "
        f"ours {ours.cpu()[tuple(bad[0])].item()!r} vs gguf-py {ref[tuple(bad[0].tolist())]!r}"
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_random_blocks_match_gguf_py(qtype: GGMLQuantizationType, device: str) -> None:
    rng = np.random.default_rng(int(qtype) + 1000)
    shape = _shape_for(qtype)
    raw = _random_tensor_bytes(rng, qtype, shape)  # (rows, row_bytes)
    assert raw.size // GGML_QUANT_SIZES[qtype][1] >= len(EDGE_FILLS) * len(EDGE_SCALES)
    ref = gguf_quants.dequantize(raw, qtype)
    ours = dequantize(torch.from_numpy(raw).reshape(-1).to(device), qtype, shape, name="blk.0.w")
    assert ours.device.type == device
    _assert_bit_exact(ours, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_real_data_matches_gguf_py(qtype: GGMLQuantizationType, device: str) -> None:
    rng = np.random.default_rng(7)
    data = rng.standard_normal((6, 512)).astype(np.float32) * np.float32([[1e-3], [0.02], [1], [30], [1], [1]])
    data[4] = 0.0  # an all-zero row: zero scales
    data[5, ::37] = 50.0  # outliers dominating their blocks
    raw = np.ascontiguousarray(gguf_quants.quantize(data, qtype)).view(np.uint8)
    ref = gguf_quants.dequantize(raw, qtype)
    ours = dequantize(torch.from_numpy(raw).to(device), qtype, data.shape, name="blk.0.w")
    _assert_bit_exact(ours, ref)
    # Guard against comparing garbage with garbage: the round trip must still resemble the data.
    assert np.corrcoef(ours.cpu().numpy()[:4].ravel(), data[:4].ravel())[0, 1] > 0.95


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_each_dequantizer_maps_blocks_to_rows(qtype: GGMLQuantizationType) -> None:
    block_size, type_size = block_info(qtype)
    assert (block_size, type_size) == GGML_QUANT_SIZES[qtype]
    blocks = torch.zeros(5, type_size, dtype=torch.uint8)
    out = DEQUANTIZERS[qtype](blocks)
    assert out.dtype == torch.float32 and out.shape == (5, block_size)


def test_raw_may_have_any_shape_and_layout() -> None:
    rng = np.random.default_rng(3)
    raw = _random_tensor_bytes(rng, T.Q4_K, (6, 256))  # (6, 144)
    flat = dequantize(torch.from_numpy(raw).reshape(-1), T.Q4_K, (2, 3, 256))
    two_d = dequantize(torch.from_numpy(raw), T.Q4_K, (2, 3, 256))
    flat_raw = torch.from_numpy(raw).reshape(-1)
    strided = torch.stack([flat_raw, torch.zeros_like(flat_raw)], dim=1)[:, 0]  # stride-2 1-D view
    assert not strided.is_contiguous()
    from_strided = dequantize(strided, T.Q4_K, (2, 3, 256))
    assert flat.shape == (2, 3, 256)
    assert torch.equal(flat, two_d) and torch.equal(flat, from_strided)
    _assert_bit_exact(flat, gguf_quants.dequantize(raw, T.Q4_K).reshape(2, 3, 256))


def test_empty_tensor() -> None:
    out = dequantize(torch.empty(0, dtype=torch.uint8), T.Q8_0, (0, 64))
    assert out.shape == (0, 64) and out.dtype == torch.float32


@pytest.mark.parametrize("qtype", [T.IQ2_XXS, T.Q8_1, T.TQ2_0, 999], ids=lambda t: getattr(t, "name", str(t)))
def test_unsupported_type_names_type_and_tensor(qtype: int) -> None:
    with pytest.raises(UnsupportedModelError) as err:
        dequantize(torch.zeros(1024, dtype=torch.uint8), qtype, (1, 256), name="blk.3.ffn_down.weight")
    message = str(err.value)
    assert "blk.3.ffn_down.weight" in message
    assert (qtype.name if isinstance(qtype, GGMLQuantizationType) else str(qtype)) in message


def test_wrong_byte_count_names_tensor_and_counts() -> None:
    with pytest.raises(GGUFError, match=r"'token_embd.weight'.*Q4_0.*576 bytes, got 575"):
        dequantize(torch.zeros(575, dtype=torch.uint8), T.Q4_0, (2, 512), name="token_embd.weight")


def test_row_not_a_whole_number_of_blocks() -> None:
    with pytest.raises(GGUFError, match=r"'output.weight'.*row length 100.*Q6_K.*256"):
        dequantize(torch.zeros(210, dtype=torch.uint8), T.Q6_K, (1, 100), name="output.weight")


def test_raw_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="uint8"):
        dequantize(torch.zeros(16, dtype=torch.int8), T.Q8_0, (1, 16), name="x")
