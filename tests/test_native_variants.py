"""The native kernels run where this process cannot load them: the neon build, cross-compiled and executed under
qemu, and this CPU's builds under AddressSanitizer and UBSan (`tests/native_remote.py` runs each call in
`tests/native/driver.c`). Every test compares with the library this process loads (the best build this CPU
runs) and with the float32 reference.

The tile kernels' integer dot products are exact and their float operations per lane are the same, in the same
order, in every build, so neon's tile matmul equals the host's bit for bit; horizontal sums (norms, attention)
differ between instruction sets only in rounding.

CI installs the cross compiler and qemu and sets FORWARDPASS_REQUIRE_CROSS=1, so there these tests run, never skip.
"""

from __future__ import annotations

import os

import pytest
import torch
from gguf import GGMLQuantizationType as T
from native_remote import CROSS, cross_tools_present, remote_library
from test_kernels import random_weight, rel_err
from test_native_decoder import decode_step_together_and_alone
from tiny_models import write_tiny_model

from forwardpass import LLM
from forwardpass.fidelity import compare_logits, decode_logits
from forwardpass.kernels import native, select
from forwardpass.kernels.tiles import TILE_TYPES, TileMatrix, tile_matmul

pytestmark = pytest.mark.slow  # builds under qemu and the sanitizers: minutes; the host build's tests stay fast

REQUIRED = os.environ.get("FORWARDPASS_REQUIRE_CROSS") == "1"
HOST = select.select_kernels("auto") if select.resolve_cpu() != "torch" else None


def _remote_params() -> list:
    """neon under qemu, and the best build this CPU runs under the sanitizers (once: the memory each kernel
    touches is addressed by the same code in every build)."""
    params = [pytest.param(("neon", False), id="neon-qemu")]
    host = [v for v in native.runnable_variants() if v not in CROSS]
    if host:
        params.append(pytest.param((host[0], True), id=f"{host[0]}-asan"))
    return params


@pytest.fixture(scope="module", params=_remote_params())
def remote(request, tmp_path_factory):
    variant, sanitize = request.param
    if HOST is None:
        pytest.skip("no native library in this process to compare with")
    if not sanitize and not native.cpu_runs(variant) and not cross_tools_present(variant):
        if REQUIRED:
            pytest.fail(f"{CROSS[variant][0]} and {CROSS[variant][1][0]} are needed to run the {variant} kernels")
        pytest.skip(f"no cross compiler / qemu for {variant} (apt install gcc-aarch64-linux-gnu qemu-user)")
    return remote_library(variant, tmp_path_factory.mktemp("driver"), sanitize=sanitize)


def test_struct_layout_matches(remote):
    import ctypes

    buf = (ctypes.c_int64 * 128)()
    n = remote.fp_abi_layout(buf, len(buf))
    assert list(buf[:n]) == native.abi_layout()


@pytest.mark.parametrize("qtype", sorted(TILE_TYPES), ids=lambda t: T(t).name)
def test_tiles_equal_the_host_build(remote, qtype):
    weight = random_weight(T(qtype), 48, 512, seed=11)
    here, there = TileMatrix([weight], HOST), TileMatrix([weight], remote)
    assert torch.equal(there.dequantize(), weight.dequantize())
    assert torch.equal(there.dequantize(torch.bfloat16), weight.dequantize().to(torch.bfloat16))
    x = torch.randn(37, 512, generator=torch.Generator().manual_seed(12))  # blocks of 16 / 8, 4 and single tokens
    y = tile_matmul([there], x)
    assert torch.equal(y, tile_matmul([here], x))
    assert rel_err(y, x @ weight.dequantize().t()) <= 1e-2
    assert torch.equal(tile_matmul([there], x[36:]), y[36:])  # a token alone == among others
    assert torch.equal(tile_matmul([there], x[:3]), y[:3])  # a block of 3 == the same tokens in a block of 16
    assert torch.equal(tile_matmul([there], x[:18]), y[:18])  # 16 + a block of 2


def test_argmax_with_special_values(remote):
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(13))
    x[0] = float("-inf")
    x[1, 700] = float("nan")
    x[1, 3] = 1e30
    x[2, 999] = float("nan")  # in the scalar tail
    x[3] = 0.0
    x[4, 17] = x[4, 900] = 50.0  # a tie: the first wins
    assert torch.equal(remote.argmax(x), x.argmax(-1))


def test_sample_rows_equals_the_host_build(remote):
    """The draw from softmax(x / T): the same tokens as the host's build (their exponentials differ in rounding
    only), never a masked one, within bounds on a row whose tail is not a whole vector."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(8, 1000, generator=gen) * 3
    x[:, ::5] = float("-inf")
    temps, u = torch.rand(8, generator=gen) + 0.3, torch.rand(8, 2, generator=gen)
    there = remote.sample(x, temps, u)
    assert torch.equal(there, HOST.sample(x, temps, u))
    assert not bool((there % 5 == 0).any())
    top_p, min_p = torch.tensor([1.0, 0.9, 0.5, 0.3] * 2), torch.tensor([0.0] * 4 + [0.05, 0.1, 0.0, 0.2])
    there = remote.sample(x, temps, u, top_p, min_p)  # with top-p and min-p
    assert torch.equal(there, HOST.sample(x, temps, u, top_p, min_p))
    tail = torch.full((4, 1000), -14.556)  # top-p's threshold among the tiny probabilities: the whole-row search
    tail[:, 0] = 0.0
    u = torch.tensor([[0.0, 0.5], [0.0002, 0.1], [0.3, 0.9], [0.00001, 0.99]])
    there = remote.sample(tail, torch.ones(4), u, torch.full((4,), 0.9999))
    assert torch.equal(there, HOST.sample(tail, torch.ones(4), u, torch.full((4,), 0.9999)))


@pytest.mark.parametrize("dim,heads,kv_heads,window", [(64, 9, 3, 0), (128, 4, 4, 0), (256, 4, 1, 20), (48, 2, 1, 0)])
def test_paged_attention_matches_the_host_build(remote, dim, heads, kv_heads, window):
    gen = torch.Generator().manual_seed(dim)
    slots, lens = 96, torch.tensor([1, 17, 40, 33], dtype=torch.int64)
    k = torch.randn(slots, kv_heads, dim, generator=gen).to(torch.bfloat16)
    v = torch.randn(slots, kv_heads, dim, generator=gen).to(torch.bfloat16)
    ctx = torch.stack([torch.randperm(slots, generator=gen)[:48] for _ in range(3)])
    seq = torch.tensor([0, 1, 2, 1], dtype=torch.int64)
    q = torch.randn(4, heads, dim, generator=gen)
    there = remote.paged_attention_into(q, k, v, ctx, seq, lens, dim**-0.5, window)
    here = HOST.paged_attention_into(q, k, v, ctx, seq, lens, dim**-0.5, window)
    assert (there - here).abs().max().item() <= 1e-5
    # and the definition: softmax(q k^T / sqrt(d)) v over each row's (windowed) context
    for r in range(4):
        first = max(0, int(lens[r]) - window) if window else 0
        keys = ctx[seq[r], first : lens[r]]
        kk = k[keys].float().repeat_interleave(heads // kv_heads, 1)  # (L, H, D)
        vv = v[keys].float().repeat_interleave(heads // kv_heads, 1)
        p = torch.softmax(torch.einsum("hd,lhd->hl", q[r], kk) * dim**-0.5, -1)
        assert (there[r] - torch.einsum("hl,lhd->hd", p, vv)).abs().max().item() <= 1e-4


def test_long_contexts_in_parts_match_the_host_build(remote):
    """Past 256 keys a row attends in parts merged in order (attention.c): every build the same to rounding, the
    sanitized one without a report."""
    gen = torch.Generator().manual_seed(5)
    slots, dim, heads, kv_heads = 800, 64, 6, 2
    k = (torch.randn(slots, kv_heads, dim, generator=gen) * 2).to(torch.bfloat16)
    v = torch.randn(slots, kv_heads, dim, generator=gen).to(torch.bfloat16)
    ctx = torch.stack([torch.randperm(slots, generator=gen)[:700] for _ in range(2)])
    seq, lens = torch.tensor([0, 1]), torch.tensor([700, 257])
    q = torch.randn(2, heads, dim, generator=gen)
    for window in (0, 300):
        there = remote.paged_attention_into(q, k, v, ctx, seq, lens, dim**-0.5, window)
        here = HOST.paged_attention_into(q, k, v, ctx, seq, lens, dim**-0.5, window)
        assert (there - here).abs().max().item() <= 1e-5


IDS = [(5 * i + 1) % 380 + 4 for i in range(30)]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # GQA and SiLU; sliding windows, GELU, sandwich norms
def test_native_step_on_the_remote_build(remote, arch, tmp_path):
    """The whole native step (every layer, the head) on the remote build: close to this process's build and
    batch-invariant there too."""
    path = str(write_tiny_model(tmp_path / "m.gguf", arch, tile_types=True))
    llm = LLM(path, cpu=HOST.variant)
    decoder = llm.model.native_decoder
    assert decoder is not None
    here = decode_logits(llm, IDS)
    decoder.lib = remote
    remote.register_cache(llm.runner.cache)
    there = decode_logits(llm, IDS)
    # horizontal sums (norms, attention) round differently per instruction set, which can flip an activation's
    # int8 rounding; measured avx2 vs avx512 and neon vs avx512 here: ~0.03 of a 3.6 logit range, where the
    # int8 activations themselves put both 0.27 from the float32 logits
    assert (there - here).abs().max().item() <= 2e-2 * here.abs().max().item()
    assert compare_logits(here, there).top1 >= 0.9
    together, alone = decode_step_together_and_alone(llm, [IDS[:12], IDS[5:20], IDS[3:7]])
    assert torch.equal(together, alone)
