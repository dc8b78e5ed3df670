"""The fast `Linear` backends agree with the exact float32 reference, for every quant type, on CPU (and CUDA).

Error budget of the fast path, relative to the output norm ||x W^T||:
- the tile kernels (every native build): int8 activations per 32 values, ~5e-3.
- bf16 activations and bf16 outputs: each rounds with relative error <= 2^-9 (RMS ~1.1e-3 over a random-sign
  sum), so about 3e-3 together; the bf16 rounding of int4 scales/zeros and of just-in-time bf16 weights adds
  similar amounts, independently per group or element.
- Int8 per-row requantization (torch fallback for the rarer K- and IQ-quants, and the CPU decode kernel of the
  5-, 6- and 8-bit types per block of columns): |w_fast - w| <= scale / 2 element-wise, checked exactly below;
  relative to the output that is ~(max|w| / rms(w)) / 440 ~ 0.5-2 % (less for narrow blocks).
So kernels are checked against their own weight at 1e-2 (a wrong layout or scale gives ~1), the repacks against
the element-wise bounds above, and the whole against the reference at 1e-2 (exact mappings) or 3e-2.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from native_params import NATIVE_PARAMS
from tiny_models import write_tiny_model

from forwardpass.engine.model_runner import Logits, ModelRunner, SeqChunk
from forwardpass.fidelity import compare_logits
from forwardpass.gguf.reader import GGUFFile
from forwardpass.gguf.weights import QuantWeight
from forwardpass.kernels import KernelChoice, make_linear
from forwardpass.kernels import gemm as gemm_module
from forwardpass.kernels import int8 as int8_module
from forwardpass.kernels.int4 import Int4Linear, Int4PackLinear, cpu_layout_known, pack_int4_cpu, unpack_int4_cpu_t
from forwardpass.kernels.int8 import Int8GroupLinear, Int8Linear, Int8PackLinear
from forwardpass.kernels.native import argmax_fn
from forwardpass.kernels.repack import (
    INT4_GROUPERS,
    INT8_GROUP_TYPES,
    concat_rows,
    release_heap,
    requantize_blocks,
    to_int4_groups,
    to_int8_groups,
    to_int8_rows,
)
from forwardpass.kernels.tiles import TILE_TYPES
from forwardpass.models.base import LoadOptions
from forwardpass.models.registry import load_model
from forwardpass.sampler import SamplingState, _uniforms, draw, target_probs
from forwardpass.sampling import SamplingParams

ALL_TYPES = [
    T.F32,
    T.F16,
    T.BF16,
    T.Q4_0,
    T.Q4_1,
    T.Q5_0,
    T.Q5_1,
    T.Q8_0,
    T.Q2_K,
    T.Q3_K,
    T.Q4_K,
    T.Q5_K,
    T.Q6_K,
    T.IQ4_NL,
    T.IQ4_XS,
]
EXACT_TYPES = {T.F32, T.F16, T.BF16, *INT4_GROUPERS}  # mapped without requantization
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)  # fixed inputs: the bounds hold with margin, and a failure reproduces


class Backend:
    def __init__(self, name: str, lib=None) -> None:
        self.name, self.lib, self.kernels = name, lib, KernelChoice(lib)

    def __eq__(self, other: object) -> bool:
        return self.name == other if isinstance(other, str) else NotImplemented


@pytest.fixture(
    params=[pytest.param(p.values[0], id=f"tiles-{p.id}", marks=p.marks) for p in NATIVE_PARAMS]
    + [pytest.param(None, id="torch")]
)
def backend(request) -> Backend:
    """On CPU the tile kernels of every native build this CPU executes, and the torch fallbacks, must all be
    right."""
    if request.param is None:
        return Backend("torch")
    from forwardpass.kernels import select

    lib = select.load_library(*request.param)
    assert lib is not None
    return Backend("tiles", lib)


def random_weight(qtype: T, rows: int, cols: int, seed: int = 0) -> QuantWeight:
    """A (rows, cols) weight: gguf-py quantizes Gaussian values where it can; otherwise random raw blocks whose
    fp16 scale fields are overwritten with small values (as tests/tiny_models.py does)."""
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    try:
        raw = np.ascontiguousarray(gguf.quants.quantize(data, qtype)).view(np.uint8).reshape(rows, -1)
    except NotImplementedError:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
        small = lambda: (rng.uniform(0.2, 1.0, size=(rows, cols // block)) * 2e-3).astype(np.float16)
        scale_fields = {
            T.Q2_K: [size - 2, size - 4],
            T.Q3_K: [size - 2],
            T.Q6_K: [size - 2],
            T.Q4_K: [0, 2],
            T.Q5_K: [0, 2],
        }.get(qtype, [0])
        for at in scale_fields:
            raw[..., at : at + 2] = small()[..., None].view(np.uint8)
        raw = raw.reshape(rows, -1)
    return QuantWeight("w", int(qtype), (rows, cols), torch.from_numpy(raw.copy()))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).norm() / ref.norm()).item()


def repacked_weight(weight: QuantWeight, backend: str) -> torch.Tensor:
    """(N, K) float32: the weight the fast path's decode kernels compute with, before activation rounding (exact
    for the tile and native kernels; bf16-rounded scales for int4; requantized for int8)."""
    if backend == "tiles" and weight.ggml_type in TILE_TYPES:
        return weight.dequantize()  # the tiles hold the GGUF weights exactly
    if weight.ggml_type in INT4_GROUPERS:  # torch's int4 kernel decodes these
        return to_int4_groups(weight).dequantize()
    if weight.ggml_type in EXACT_TYPES:
        return weight.dequantize(torch.bfloat16).float()
    if weight.ggml_type in INT8_GROUP_TYPES:
        return weight.dequantize()  # exact codes and group scales
    return to_int8_rows(weight).dequantize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_fast_matches_reference(qtype, device, backend):
    if device != "cpu" and backend != "torch":
        pytest.skip("native kernels are CPU-only")
    weight = random_weight(qtype, 128, 512)
    fast = make_linear(weight, mode="fast", device=device, kernels=backend.kernels)
    exact = weight.dequantize().to(device)  # (N, K) float32
    repacked = repacked_weight(weight, backend if device == "cpu" else "torch").to(device)
    gen = torch.Generator().manual_seed(1)
    for t in (1, 7, 64, 200):  # 200 tokens: past every backend's prefill threshold
        x = torch.randn(t, 512, generator=gen).to(device)
        y = fast(x)
        assert y.shape == (t, 128) and y.dtype in (torch.float32, torch.bfloat16)
        assert rel_err(y, x @ repacked.t()) <= 1e-2, f"T={t}: kernel disagrees with its own weight"
        exact_mapping = (
            qtype in EXACT_TYPES
            or qtype in INT8_GROUP_TYPES
            or (device == "cpu" and backend == "tiles" and qtype in TILE_TYPES)
        )
        assert rel_err(y, x @ exact.t()) <= (1e-2 if exact_mapping else 3e-2), f"T={t}"


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q4_K], ids=lambda t: t.name)
def test_int4_groups_map_exactly(qtype):
    weight = random_weight(qtype, 64, 512)
    groups = to_int4_groups(weight)
    exact = weight.dequantize()
    # exact in float32 before the kernels' bf16 rounding...
    s, z = groups.scale.repeat_interleave(32, 1), groups.zero.repeat_interleave(32, 1)
    torch.testing.assert_close((groups.q.float() - 8) * s + z, exact, rtol=1e-6, atol=1e-7)
    # ...and within that rounding (relative 2^-8 of 8 |scale| + |zero|) after it
    bound = 2.0**-8 * (8 * s.abs() + z.abs()) + 1e-7
    assert ((groups.dequantize() - exact).abs() <= bound).all()


@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t not in EXACT_TYPES], ids=lambda t: t.name)
def test_int8_rows_error_is_half_a_step(qtype):
    weight = random_weight(qtype, 64, 512)
    rows = to_int8_rows(weight)
    assert torch.equal(rows.scale.to(torch.bfloat16).float(), rows.scale)  # bf16-exact scales
    err = (rows.dequantize() - weight.dequantize()).abs()
    assert (err <= 0.5 * rows.scale.unsqueeze(1) * (1 + 1e-6)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q6_K, T.Q3_K, T.F16], ids=lambda t: t.name)
def test_bias_is_added(qtype, device, backend):
    weight = random_weight(qtype, 64, 256)
    bias = torch.randn(64)
    fast = make_linear(weight, bias, mode="fast", device=device, kernels=backend.kernels)
    ref = make_linear(weight, bias, mode="reference", device=device)
    for t in (1, 200):
        x = torch.randn(t, 256, device=device)
        assert rel_err(fast(x), ref(x)) <= 3e-2


def test_odd_shapes_fall_back_cleanly(monkeypatch):
    # N % 16 != 0: the CPU int4 kernel cannot pack it; the generic int4 path takes it
    weight = random_weight(T.Q4_0, 200, 256)
    fast = make_linear(weight, mode="fast")
    assert isinstance(fast, Int4Linear)
    x = torch.randn(3, 256)
    assert rel_err(fast(x), x @ weight.dequantize().t()) <= 1e-2
    # N % 64 != 0: packed with a short last block, which the prefill path must unpack too
    weight = random_weight(T.Q4_K, 80, 256)
    fast = make_linear(weight, mode="fast")
    assert isinstance(fast, Int4PackLinear)
    for t in (1, 200):
        x = torch.randn(t, 256)
        assert rel_err(fast(x), x @ weight.dequantize().t()) <= 1e-2
    # K not a multiple of 32 (only float types allow it): a dense bf16 weight
    weight = random_weight(T.F16, 24, 40)
    x = torch.randn(2, 40)
    assert rel_err(make_linear(weight, mode="fast")(x), x @ weight.dequantize().t()) <= 1e-2


@pytest.mark.skipif(not cpu_layout_known(), reason="this torch build packs int4 in another layout")
def test_int4_cpu_layout_round_trips():
    q = torch.randint(0, 16, (64 * 3 + 32, 96), dtype=torch.uint8)
    assert torch.equal(unpack_int4_cpu_t(pack_int4_cpu(q), *q.shape).t(), q)


def test_int8_dense_path_in_chunks(monkeypatch):
    weight = random_weight(T.Q3_K, 300, 256)
    fast = make_linear(weight, mode="fast")
    x = torch.randn(40, 256)
    whole = fast(x)
    monkeypatch.setattr(int8_module, "DENSE_CHUNK_BYTES", 64 * 256 * 2)  # 64 rows at a time
    torch.testing.assert_close(fast(x), whole)
    assert isinstance(fast, Int8PackLinear) and isinstance(fast, Int8Linear)


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q5_0, T.Q6_K], ids=lambda t: t.name)
def test_fused_projection_equals_separate_ones(qtype, backend):
    parts = [random_weight(qtype, n, 256, seed=i) for i, n in enumerate((128, 64, 64))]
    fused = make_linear(concat_rows(parts, "qkv"), mode="fast", kernels=backend.kernels)
    x = torch.randn(3, 256)
    separate = torch.cat([make_linear(w, mode="fast", kernels=backend.kernels)(x).float() for w in parts], dim=1)
    assert rel_err(fused(x), separate) <= 1e-3  # equal up to a kernel's blocking (bf16 rounding at most)
    with pytest.raises(ValueError, match="cannot fuse"):
        concat_rows([parts[0], random_weight(T.Q8_0, 64, 256)], "bad")
    release_heap()  # harmless at any time


def tiny_logits(path: str, mode: str, ids: list[int], device: str = "cpu", native=None) -> torch.Tensor:
    model = load_model(GGUFFile(path), LoadOptions(mode=mode, device=device, kernels=KernelChoice(native)))
    kv_dtype = torch.float32 if mode == "reference" else torch.bfloat16
    runner = ModelRunner(model, kv_groups=4, block_size=16, kv_dtype=kv_dtype, device=device)
    return runner.run([SeqChunk(ids, 0, [[0, 1, 2]], Logits.ALL)]).cpu()


TINY_IDS = [(5 * i + 1) % 380 + 4 for i in range(40)]


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory) -> dict[str, tuple[str, torch.Tensor]]:
    """arch -> (tiny model path, exact logits), computed once for both backends."""
    out = {}
    for arch in ("llama", "qwen2", "qwen3", "gemma3"):
        path = str(write_tiny_model(tmp_path_factory.mktemp(arch) / f"{arch}.gguf", arch))
        out[arch] = path, tiny_logits(path, "reference", TINY_IDS)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_tiny_models_fast_logits_stay_close(tiny_reference, arch, backend, device):
    """Tiny models cycle through every quant type; the fast path's next-token distributions stay close (on CUDA
    too, against the CPU's exact logits)."""
    if device != "cpu" and backend != "torch":
        pytest.skip("native kernels are CPU-only")
    path, exact = tiny_reference[arch]
    kl = compare_logits(exact, tiny_logits(path, "fast", TINY_IDS, device, backend.lib)).mean_kl
    # measured: native 1.2e-4 to 1.7e-4, torch fallbacks 2.3e-4 to 3.3e-4, except qwen3 (2.6e-3 native, 5.1e-3
    # torch): its logits are peaked (entropy 0.7 nats), bf16 activations alone give 1.9e-3 there, and its random
    # K-quant blocks are the worst case for the torch fallback's int8 per-row requantization
    assert kl <= 1e-2, f"mean KL {kl:.3g}"


@pytest.mark.parametrize("qtype", INT8_GROUP_TYPES, ids=lambda t: t.name)
def test_int8_groups_hold_the_weights_exactly(qtype, monkeypatch):
    weight = random_weight(qtype, 96, 512)
    groups = to_int8_groups(weight)
    assert torch.equal(groups.dequantize(), weight.dequantize())
    assert groups.q.dtype == torch.uint8 and groups.scale.numel() * groups.group == weight.shape[0] * weight.shape[1]
    fast = make_linear(weight, mode="fast")
    x = torch.randn(40, 512)
    whole = fast(x)
    monkeypatch.setattr(int8_module, "DENSE_CHUNK_BYTES", 32 * 512 * 4)  # 32 rows at a time
    assert torch.equal(fast(x), whole)


@pytest.mark.parametrize("width", [96, 512, 1000])
@pytest.mark.parametrize("qtype", INT8_GROUP_TYPES, ids=lambda t: t.name)
def test_int8_blocks_error_is_half_a_step(qtype, width):
    """The CPU decode copy of the 5-, 6- and 8-bit weights: per row and block of `width` columns (the last one
    narrower), bf16-exact scales and an error of at most half a step."""
    weight = random_weight(qtype, 64, 512)
    blocks = requantize_blocks(to_int8_groups(weight), width)
    assert [b.q.shape[1] for b in blocks] == [min(width, 512 - a) for a in range(0, 512, width)]
    exact = weight.dequantize()
    start = 0
    for b in blocks:
        assert b.q.dtype == torch.int8 and torch.equal(b.scale.to(torch.bfloat16).float(), b.scale)
        err = (b.dequantize() - exact[:, start : start + b.q.shape[1]]).abs()
        assert (err <= 0.5 * b.scale.unsqueeze(1) * (1 + 1e-6)).all()
        start += b.q.shape[1]


@pytest.mark.parametrize("qtype", INT8_GROUP_TYPES, ids=lambda t: t.name)
def test_int8_group_decode_kernel(qtype):
    """Generated tokens read the requantized blocks: close to their own weight and to the exact one, and a row's
    result is bit-identical whatever the rows beside it (a decode step batches any number of sequences)."""
    weight = random_weight(qtype, 160, 512)
    fast = make_linear(weight, mode="fast")
    assert isinstance(fast, Int8GroupLinear) and len(fast.blocks) == -(-512 // fast.decode_block)
    own = torch.cat(
        [requantize_blocks(fast.groups, fast.decode_block)[i].dequantize() for i in range(len(fast.blocks))], dim=1
    )
    x = torch.randn(20, 512)
    full = fast(x, prefill=False)
    assert rel_err(full, x @ own.t()) <= 1e-2
    assert rel_err(full, x @ weight.dequantize().t()) <= 1e-2
    for rows in (slice(0, 1), slice(7, 8), slice(19, 20), slice(3, 9), slice(0, 16)):
        assert torch.equal(fast(x[rows], prefill=False), full[rows]), rows
    assert torch.equal(fast(x[:1]), full[:1])  # one row without a role: the decode kernel
    assert rel_err(fast(x, prefill=True), x @ weight.dequantize().t()) <= 1e-2  # the prompt: exact weights


@pytest.mark.parametrize("qtype", [T.F32, T.Q4_1, T.Q6_K, T.Q3_K], ids=lambda t: t.name)
def test_row_blocks_cover_every_row(qtype, monkeypatch):
    """Off the CPU every GEMM runs on fixed blocks of rows; forced here on the CPU, the blocking (padding, a partial
    last block, the weight's column chunks) gives the plain product."""
    weight = random_weight(qtype, 96, 256)
    x = torch.randn(37, 256)
    for mode in ("fast", "reference", "dequant"):  # the fast path through torch's kernels, as off the CPU
        linear = make_linear(weight, mode=mode, kernels=KernelChoice(int4_cpu=False))
        whole = linear(x).float()
        monkeypatch.setattr(gemm_module, "row_blocked", lambda x: True)
        monkeypatch.setattr(gemm_module, "ROW_BLOCK", 8)
        monkeypatch.setattr(int8_module, "DENSE_CHUNK_BYTES", 40 * 256 * 4)  # column chunks of 40 and 10 rows of W
        blocked = linear(x).float()
        assert rel_err(blocked, whole) <= 1e-2, mode
        assert rel_err(linear(x[:1]).float(), whole[:1]) <= 1e-2, mode
        monkeypatch.undo()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("mode", ["fast", "reference"])
@pytest.mark.parametrize("qtype", [T.F16, T.Q4_1, T.Q4_K, T.Q8_0, T.Q6_K, T.Q3_K], ids=lambda t: t.name)
def test_cuda_row_never_depends_on_the_batch(qtype, mode):
    """On CUDA a row's output is bit-identical whatever the rows beside it and its place among them."""
    linear = make_linear(random_weight(qtype, 384, 512), mode=mode, device="cuda")
    x = torch.randn(200, 512, device="cuda")
    full = linear(x)
    for rows in (slice(0, 1), slice(63, 64), slice(199, 200), slice(0, 7), slice(5, 69), slice(64, 200)):
        assert torch.equal(linear(x[rows]), full[rows]), rows


@pytest.mark.parametrize("shape", [(1, 49152), (16, 1000), (3, 17), (5, 16), (2, 1)])
def test_argmax_rows_matches_torch(shape, native_lib):
    argmax_rows = argmax_fn(native_lib)
    gen = torch.Generator().manual_seed(shape[1])
    x = torch.randn(*shape, generator=gen)
    assert torch.equal(argmax_rows(x), x.argmax(-1))
    x = torch.randint(-3, 3, shape, generator=gen).float()  # many ties: the first index wins
    assert torch.equal(argmax_rows(x), x.argmax(-1))


def test_argmax_rows_special_values(native_lib):
    argmax_rows = argmax_fn(native_lib)
    x = torch.randn(6, 100)
    x[0] = float("-inf")  # all -inf: index 0
    x[1, 40] = float("inf")
    x[2, 70] = float("nan")  # NaN counts as the maximum, even after a larger value
    x[2, 10] = 1e30
    x[3, 99] = float("nan")  # in the scalar tail
    x[3, 5] = float("nan")
    x[4] = 0.0
    x[4, 50] = -0.0
    assert torch.equal(argmax_rows(x), x.argmax(-1))
    assert argmax_rows(x)[2] == 70 and argmax_rows(x)[3] == 5
    assert torch.equal(argmax_rows(x[:, ::2]), x[:, ::2].argmax(-1))  # not contiguous
    assert torch.equal(argmax_rows(x.double()), x.double().argmax(-1))  # falls back to torch


def _seeded_rows(params: list[SamplingParams], vocab: int) -> list[SamplingState]:
    rows = [SamplingState(p) for p in params]
    for row in rows:
        row.bind(vocab, torch.device("cpu"))
    return rows


@pytest.mark.parametrize("rows, vocab", [(16, 49152), (64, 1000), (64, 300), (64, 17)])
def test_sample_rows_draws_as_the_sampler_does(native_lib, rows, vocab):
    """The native draw from softmax(x / T) after top-p and min-p, against the sampler's PyTorch path with the same
    uniform numbers: the same tokens (up to float rounding at a boundary, which these rows never meet), never a
    masked one."""
    gen = torch.Generator().manual_seed(vocab)
    x = torch.randn(rows, vocab, generator=gen) * 4
    x[:, 3::7] = float("-inf")  # masked out: must never be drawn
    params = [
        SamplingParams(
            temperature=0.2 + 0.05 * i,
            top_p=(1.0, 0.9, 0.5, 0.95)[i % 4],
            min_p=(0.0, 0.0, 0.05, 0.1)[i // 4 % 4],
            seed=i,
        )
        for i in range(rows)
    ]
    a = _seeded_rows(params, vocab)
    reference = draw(target_probs(x, a), a)
    temps, top_p, min_p = (torch.tensor([getattr(p, f) for p in params]) for f in ("temperature", "top_p", "min_p"))
    u = _uniforms(_seeded_rows(params, vocab), x.device)
    got = native_lib.sample(x, temps, u, top_p, min_p)
    assert torch.equal(got, reference)
    assert not bool(((got % 7 == 3) & (got >= 3)).any())
    for r in (0, rows // 2 + 1, rows - 1):  # a row alone draws what it draws in the batch
        alone = native_lib.sample(x[r : r + 1], temps[r : r + 1], u[r : r + 1], top_p[r : r + 1], min_p[r : r + 1])
        assert alone.item() == got[r].item()
    plain = [i for i, p in enumerate(params) if p.top_p == 1.0 and p.min_p == 0.0]  # without the filters' arrays
    assert torch.equal(native_lib.sample(x[plain], temps[plain], u[plain]), got[plain])


def test_sample_rows_top_p_threshold_in_crowded_rows(native_lib):
    """Top-p's threshold is found ten bits of the float at a time: rows whose probabilities share their top bits
    (near-equal logits), exact ties at the threshold, one dominant token and a flat row draw what the sampler's
    sort-and-cumsum path draws, for many uniform numbers."""
    vocab, reps = 3000, 40
    gen = torch.Generator().manual_seed(21)
    near = 1e-4 * torch.randn(vocab, generator=gen)  # e within ~1e-3 of 1: one bucket of the top ten bits
    ties = torch.randn(vocab, generator=gen).round()  # few distinct values, each shared by many tokens
    dominant = torch.full((vocab,), -5.0)
    dominant[17] = 5.0
    flat = torch.zeros(vocab)
    rows, params = [], []
    for i, (row, top_p) in enumerate(
        [(near, 0.5), (near, 0.93), (ties, 0.6), (ties, 0.9), (dominant, 0.5), (flat, 0.3)]
    ):
        for j in range(reps):
            rows.append(row)
            params.append(SamplingParams(temperature=0.9, top_p=top_p, seed=1000 * i + j))
    x = torch.stack(rows)
    a = _seeded_rows(params, vocab)
    reference = draw(target_probs(x, a), a)
    u = _uniforms(_seeded_rows(params, vocab), x.device)
    temps, top_p = torch.full((len(rows),), 0.9), torch.tensor([p.top_p for p in params])
    got = native_lib.sample(x, temps, u, top_p)
    assert torch.equal(got, reference)
    assert bool((got[4 * reps : 5 * reps] == 17).all())


def test_sample_rows_top_p_threshold_in_the_tail(native_lib):
    """When top-p reaches down among the tiny probabilities (below 2^-20, which the threshold search first sets
    aside), the whole row is searched: here 99,999 tied tokens of e^-14.6 each hold 4.5% of the mass, top_p 0.99
    keeps them all, and the low uniform numbers draw among them as without top-p."""
    vocab, rows = 100_000, 16
    x = torch.full((rows, vocab), -14.556)
    x[:, 0] = 0.0
    u = torch.stack([torch.arange(rows) / rows / 24, torch.full((rows,), 0.5)], dim=1)  # u0 < 0.045: the tail
    temps = torch.ones(rows)
    got = native_lib.sample(x, temps, u, torch.full((rows,), 0.99))
    assert torch.equal(got, native_lib.sample(x, temps, u))
    assert bool((got != 0).all())


def test_sample_rows_frequencies_and_special_rows(native_lib):
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, float("-inf"), 0.5] * 3)  # 18 tokens: a vector and a tail
    logits[10] = -3e38  # how a grammar mask forbids a token
    n = 20000
    u = torch.rand(n, 2, generator=torch.Generator().manual_seed(5))
    tokens = native_lib.sample(logits.repeat(n, 1), torch.full((n,), 0.8), u)
    freq = torch.bincount(tokens, minlength=18).double() / n
    assert (freq - (logits / 0.8).softmax(-1).double()).abs().max().item() < 0.01
    assert freq[4::6].sum().item() == 0.0 and freq[10].item() == 0.0  # the masked tokens
    special = torch.full((3, 40), float("-inf"))
    special[1, 33] = 2.0  # one allowed token
    special[2] = torch.arange(40.0)
    special[2, 39] = float("inf")
    got = native_lib.sample(special, torch.ones(3), torch.full((3, 2), 0.5)).tolist()
    assert 0 <= got[0] < 40 and got[1] == 33 and 0 <= got[2] < 40


@pytest.mark.parametrize("qtype", sorted(TILE_TYPES), ids=lambda t: T(t).name)
def test_tile_matmul_is_bit_identical_in_every_build(native_lib, qtype):
    """Every build this CPU runs (avx512, avx2 with and without AVX-VNNI, each with its own loop order) gives the
    best build's products bit for bit, for blocks of 16 / 8 / 4 tokens, a last 3 or 2 (plain AVX2: one block of
    halves) and single ones."""
    from forwardpass.kernels import select
    from forwardpass.kernels.tiles import TileMatrix, tile_matmul

    best = select.select_kernels("auto")
    weight = random_weight(T(qtype), 48, 512, seed=11)
    x = torch.randn(39, 512, generator=torch.Generator().manual_seed(12))
    for n in (37, 39, 18, 3):  # 32 + 4 + 1, 32 + 4 + 3, 16 + 2, 3
        y = tile_matmul([TileMatrix([weight], native_lib)], x[:n])
        assert torch.equal(y, tile_matmul([TileMatrix([weight], best)], x[:n])), n
        assert rel_err(y, x[:n] @ weight.dequantize().t()) <= 1e-2


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q5_0, T.Q8_0], ids=lambda t: T(t).name)
def test_tile_matmul_offset_codes_are_exact_in_the_integers(native_lib, qtype):
    """Q4_0 / Q5_0 / Q8_0 weights are d * (code + c): the c * sum(x) term is added in the integer dot product, not
    as a second float product (which cancelled most of the first when the activations share an offset), so the
    result is the exact product of the quantized operands up to float32 accumulation alone."""
    from forwardpass.kernels.tiles import TileMatrix, tile_matmul

    weight = random_weight(qtype, 256, 2048, seed=3)
    x = torch.randn(16, 2048, generator=torch.Generator().manual_seed(4)) + 3.0
    q = torch.empty(16, 2048, dtype=torch.int8)
    dx, sx, s16 = torch.empty(16, 64), torch.empty(16, 64), torch.empty(16, 128, dtype=torch.int32)
    native_lib.quantize_rows(x.data_ptr(), 16, 2048, 2048, q.data_ptr(), dx.data_ptr(), sx.data_ptr(), s16.data_ptr())
    xq = q.double().view(64, 16, 32).permute(1, 0, 2) * dx.double().view(16, 64, 1)  # codes are group-major
    exact = xq.reshape(16, 2048) @ weight.dequantize().double().t()
    y = tile_matmul([TileMatrix([weight], native_lib)], x).double()
    assert (y - exact).abs().max().item() <= 4.5e-7 * exact.abs().max().item()  # 6-7e-7 with the float offset


@pytest.mark.parametrize("vocab", [1000, 49152])
def test_native_grammar_mask_keeps_exactly_the_allowed_logits(native_lib, vocab):
    """`mask_rows`: listed rows keep the logits whose bit is set and get -inf elsewhere, other rows untouched;
    a row reports empty when nothing it keeps is above -inf (a NaN kept counts as something)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, vocab, generator=gen)
    rows = [0, 2, 3, 5, 6, 7]
    words = torch.randint(-(2**31), 2**31 - 1, (len(rows), (vocab + 31) // 32), generator=gen, dtype=torch.int64)
    words = words.to(torch.int32).numpy().copy()
    words[1] = -1  # row 2: everything allowed
    words[2] = 0  # row 3: nothing allowed
    x[5, np.flatnonzero(np.unpackbits(words[3].view(np.uint8), bitorder="little")[:vocab])] = float("-inf")
    x[6, 7] = float("nan")
    words[4] = 0
    words[4, 0] = 1 << 7  # row 6: only its NaN allowed
    allowed = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, :vocab].astype(bool)
    want = x.clone()
    for k, r in enumerate(rows):
        want[r] = torch.where(torch.from_numpy(allowed[k]), x[r], torch.tensor(float("-inf")))
    empty = native_lib.mask(x, rows, words)
    assert torch.equal(x.nan_to_num(nan=7.0), want.nan_to_num(nan=7.0))
    assert empty.tolist() == [False, False, True, True, False, False]
