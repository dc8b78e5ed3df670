"""The CPU tile kernels and the native decode step agree with the PyTorch definition of every architecture."""
from __future__ import annotations

import os

import pytest
import torch
from gguf import GGMLQuantizationType as T

from forwardpass import LLM
from forwardpass.engine.model_runner import SeqChunk
from forwardpass.kernels import tiles as tiles_module
from forwardpass.kernels.tiles import TILE_TYPES, TileLinear, TileMatrix, tile_matmul, tiles_available
from test_fidelity import decode_logits
from test_kernels import random_weight, rel_err
from tiny_models import write_tiny_model

NEEDS_TILES = pytest.mark.skipif(not tiles_available(), reason="tile kernels need AVX-512 VNNI and a C compiler")
ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]


@pytest.mark.parametrize("qtype", sorted(TILE_TYPES), ids=lambda t: T(t).name)
@NEEDS_TILES
def test_tiles_hold_the_gguf_weights_exactly(qtype):
    a, b = random_weight(T(qtype), 48, 512, seed=1), random_weight(T(qtype), 32, 512, seed=2)
    stacked = TileMatrix([a, b])
    assert stacked.n == 80 and stacked.k == 512
    assert torch.equal(stacked.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    assert torch.equal(stacked.dequantize_rows(16, 64), torch.cat([a.dequantize(), b.dequantize()])[16:64])
    assert stacked.nbytes <= 1.05 * (a.raw.numel() + b.raw.numel()) + 80 * 512 // 256 * 8  # about the GGUF size


@pytest.mark.parametrize("qtype", sorted(TILE_TYPES), ids=lambda t: T(t).name)
@NEEDS_TILES
def test_tile_matmul_is_close_and_row_invariant(qtype):
    weight = random_weight(T(qtype), 64, 512, seed=3)
    mat = TileMatrix([weight])
    x = torch.randn(9, 512, generator=torch.Generator().manual_seed(4))
    y = tile_matmul([mat], x)
    assert rel_err(y, x @ weight.dequantize().t()) <= 1e-2  # int8 activations: ~5e-3
    for i in (0, 4, 8):  # a row's result does not depend on the other rows (blocks of 4 and the remainder)
        assert torch.equal(tile_matmul([mat], x[i:i + 1]), y[i:i + 1])
    assert tile_matmul([mat], torch.zeros(2, 512)).abs().max() == 0


@NEEDS_TILES
def test_two_matrices_in_one_call_equal_separate_calls():
    a, b = random_weight(T.Q4_K, 32, 256, seed=5), random_weight(T.Q6_K, 48, 256, seed=6)
    ma, mb = TileMatrix([a]), TileMatrix([b])
    x = torch.randn(3, 256)
    assert torch.equal(tile_matmul([ma, mb], x), torch.cat([tile_matmul([ma], x), tile_matmul([mb], x)], dim=1))


@NEEDS_TILES
def test_tile_dense_path_in_chunks(monkeypatch):
    weight = random_weight(T.Q5_0, 96, 256, seed=7)
    linear = TileLinear([weight])
    x = torch.randn(40, 256).to(torch.bfloat16)
    whole = linear.dense(x)
    assert rel_err(whole, x.float() @ weight.dequantize().t()) <= 1e-2  # bf16 GEMM
    monkeypatch.setattr(tiles_module, "DENSE_CHUNK_BYTES", 32 * 256 * 2)  # 32 rows at a time
    assert torch.equal(linear.dense(x), whole)


IDS = [(5 * i + 1) % 380 + 4 for i in range(30)]  # 30 tokens: past gemma3's 8-token test window


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory) -> tuple[str, torch.Tensor]:
    path = str(write_tiny_model(tmp_path_factory.mktemp(request.param) / "m.gguf", request.param, tile_types=True))
    return path, LLM(path, reference=True).logits(IDS)


@NEEDS_TILES
def test_native_step_matches_the_pytorch_layers(tiny):
    path, exact = tiny
    llm = LLM(path)
    decoder = llm.model.native_decoder
    assert decoder is not None, "every weight is a tile type: the native step must be used"
    native = decode_logits(llm, IDS)
    llm.model.native_decoder = None  # the same tiles through the PyTorch layers
    layers = decode_logits(llm, IDS)
    llm.model.native_decoder = decoder
    scale = exact.abs().max().item()
    # both quantize the same activations to int8; they differ in the order of float sums only
    assert (native - layers).abs().max().item() <= 2e-2 * scale
    p, q = torch.log_softmax(exact.double(), -1), torch.log_softmax(native.double(), -1)
    assert (p.exp() * (p - q)).sum(-1).mean().item() <= 1e-2
    assert (native.argmax(-1) == exact.argmax(-1)).double().mean().item() >= 0.9


@NEEDS_TILES
def test_native_step_is_batch_invariant(tiny):
    path, _ = tiny
    llm = LLM(path)
    prompts = [IDS[:12], IDS[5:20], IDS[3:7]]
    with llm.engine.scratch_blocks(32, len(prompts)) as tables:
        for ids, table in zip(prompts, tables):  # prompts in the cache, then one decode step for all three
            llm.runner.run([SeqChunk(ids, 0, table, "none")])
        together = llm.runner.run([SeqChunk([9], len(ids), t, "last", prompt_len=0) for ids, t in zip(prompts, tables)])
        alone = [llm.runner.run([SeqChunk([9], len(ids), t, "last", prompt_len=0)]) for ids, t in zip(prompts, tables)]
    assert torch.equal(together, torch.cat(alone))


def test_native_code_builds_where_it_can():
    """On an x86-64 CPU with AVX-512 VNNI and a C compiler the C code must build and pass its self-tests: a
    source that stops compiling would otherwise only show up as skipped tests and a slow fallback."""
    import shutil

    from forwardpass.kernels.native import _build, _cpu_flags

    if not {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= _cpu_flags() or not shutil.which("cc"):
        pytest.skip("no AVX-512 VNNI CPU or no C compiler here")
    if os.environ.get("FORWARDPASS_NATIVE") == "0":
        pytest.skip("native kernels switched off (FORWARDPASS_NATIVE=0)")
    _build()  # raises CalledProcessError with the compiler's message
    assert tiles_available()
