"""The CPU tile kernels and the native decode step agree with the PyTorch definition of every architecture, in
every build of the native library this CPU executes (`native_lib`: avx512, avx2 with and without AVX-VNNI,
neon)."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil

import pytest
import torch
from gguf import GGMLQuantizationType as T
from test_kernels import random_weight, rel_err
from tiny_models import write_tiny_model

from forwardpass import LLM
from forwardpass.engine.model_runner import Logits, SeqChunk
from forwardpass.fidelity import compare_logits, decode_logits
from forwardpass.kernels import tiles as tiles_module
from forwardpass.kernels.tiles import TILE_TYPES, TileLinear, TileMatrix, tile_matmul

ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]


@pytest.mark.parametrize("qtype", sorted(TILE_TYPES), ids=lambda t: T(t).name)
def test_tiles_hold_the_gguf_weights_exactly(qtype, native_lib):
    a, b = random_weight(T(qtype), 48, 512, seed=1), random_weight(T(qtype), 32, 512, seed=2)
    stacked = TileMatrix([a, b], native_lib)
    assert stacked.n == 80 and stacked.k == 512
    assert torch.equal(stacked.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    assert torch.equal(stacked.dequantize_rows(16, 64), torch.cat([a.dequantize(), b.dequantize()])[16:64])
    assert stacked.nbytes <= 1.05 * (a.raw.numel() + b.raw.numel()) + 80 * 512 // 256 * 8  # about the GGUF size


@pytest.mark.parametrize("qtype", sorted(TILE_TYPES), ids=lambda t: T(t).name)
def test_tile_matmul_is_close_and_row_invariant(qtype, native_lib):
    weight = random_weight(T(qtype), 64, 512, seed=3)
    mat = TileMatrix([weight], native_lib)
    x = torch.randn(9, 512, generator=torch.Generator().manual_seed(4))
    y = tile_matmul([mat], x)
    assert rel_err(y, x @ weight.dequantize().t()) <= 1e-2  # int8 activations: ~5e-3
    for i in (0, 4, 8):  # a row's result does not depend on the other rows (blocks of 4 and the remainder)
        assert torch.equal(tile_matmul([mat], x[i : i + 1]), y[i : i + 1])
    x16 = torch.randn(37, 512, generator=torch.Generator().manual_seed(5))  # blocks of 16 / 8, then 4, then 1
    y16 = tile_matmul([mat], x16)
    assert torch.equal(y16[:9], tile_matmul([mat], x16[:9])) and torch.equal(y16[36:], tile_matmul([mat], x16[36:]))
    assert tile_matmul([mat], torch.zeros(2, 512)).abs().max() == 0


def test_two_matrices_in_one_call_equal_separate_calls(native_lib):
    a, b = random_weight(T.Q4_K, 32, 256, seed=5), random_weight(T.Q6_K, 48, 256, seed=6)
    ma, mb = TileMatrix([a], native_lib), TileMatrix([b], native_lib)
    x = torch.randn(3, 256)
    assert torch.equal(tile_matmul([ma, mb], x), torch.cat([tile_matmul([ma], x), tile_matmul([mb], x)], dim=1))


def test_tile_dense_path_in_chunks(monkeypatch, native_lib):
    weight = random_weight(T.Q5_0, 96, 256, seed=7)
    linear = TileLinear([weight], native_lib)
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


def test_native_step_matches_the_pytorch_layers(tiny, native_kernels):
    path, exact = tiny
    llm = LLM(path, kernels=native_kernels)
    decoder = llm.model.native_decoder
    assert decoder is not None, "every weight is a tile type: the native step must be used"
    native = decode_logits(llm, IDS)
    without_step = LLM(path, kernels=dataclasses.replace(native_kernels, native_step=False))
    assert without_step.model.native_decoder is None
    layers = decode_logits(without_step, IDS)  # the same tiles through the PyTorch layers
    scale = exact.abs().max().item()
    # both quantize the same activations to int8; they differ in the order of float sums only
    assert (native - layers).abs().max().item() <= 2e-2 * scale
    agreement = compare_logits(exact, native)
    assert agreement.mean_kl <= 1e-2 and agreement.top1 >= 0.9, agreement


@pytest.mark.parametrize("n_seqs", [3, 6])
def test_native_step_is_batch_invariant(tiny, native_kernels, n_seqs):
    """3 sequences on 2 threads: the attention shared out per (token, KV head); 6: per token, with its row of
    attn_output's input quantized in the same unit. Either way a token's logits are those it gets alone."""
    path, _ = tiny
    llm = LLM(path, kernels=native_kernels, threads=2)
    prompts = [IDS[:12], IDS[5:20], IDS[3:7], IDS[1:9], IDS[10:29], IDS[:2]][:n_seqs]
    together, alone = decode_step_together_and_alone(llm, prompts)
    assert torch.equal(together, alone)


def decode_step_together_and_alone(llm: LLM, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts in the cache, then one decode step's logits for all of them together and for each alone."""
    with llm.engine.scratch_blocks(max(32, max(map(len, prompts)) + 1), len(prompts)) as tables:
        for ids, table in zip(prompts, tables):
            llm.runner.run([SeqChunk(ids, 0, table, Logits.NONE)])
        step = [SeqChunk([9], len(ids), t, Logits.LAST, prompt_len=0) for ids, t in zip(prompts, tables)]
        together = llm.runner.run(step)
        alone = torch.cat([llm.runner.run([chunk]) for chunk in step])
    return together, alone


@pytest.mark.parametrize("dim,heads,kv_heads,window", [(64, 9, 3, 0), (256, 4, 1, 0), (256, 4, 1, 300), (48, 2, 1, 0)])
def test_long_contexts_attend_in_parts_as_the_definition(native_lib, dim, heads, kv_heads, window):
    """Past 256 keys a row attends in parts of 256 keys, each softmaxed on its own maximum, merged in order: still
    softmax(q k^T / sqrt(d)) v over the row's (windowed) context."""
    gen = torch.Generator().manual_seed(dim + window)
    slots, lens = 1024, torch.tensor([700, 256, 257, 513], dtype=torch.int64)
    k = (torch.randn(slots, kv_heads, dim, generator=gen) * 2).to(torch.bfloat16)
    v = torch.randn(slots, kv_heads, dim, generator=gen).to(torch.bfloat16)
    ctx = torch.stack([torch.randperm(slots, generator=gen)[:800] for _ in range(4)])
    seq = torch.arange(4)
    q = torch.randn(4, heads, dim, generator=gen)
    out = native_lib.paged_attention_into(q, k, v, ctx, seq, lens, dim**-0.5, window)
    for r in range(4):
        first = max(0, int(lens[r]) - window) if window else 0
        keys = ctx[r, first : lens[r]]
        kk = k[keys].float().repeat_interleave(heads // kv_heads, 1)  # (L, H, D)
        vv = v[keys].float().repeat_interleave(heads // kv_heads, 1)
        p = torch.softmax(torch.einsum("hd,lhd->hl", q[r], kk) * dim**-0.5, -1)
        assert (out[r] - torch.einsum("hl,lhd->hd", p, vv)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # GQA, SiLU; one KV head, windows of 300 (two parts)
def test_long_contexts_give_the_same_logits_on_any_thread(arch, native_kernels, tmp_path):
    """One or two streams leave the step's threads too few (token, KV head) units, so it shares out the parts of
    their long contexts instead and merges them; six run each row whole on one thread. From the same cache, the same
    logits either way, and close to the exact PyTorch model's."""
    path = str(write_tiny_model(tmp_path / "m.gguf", arch, tile_types=True, context_length=1024, sliding_window=300))
    llm = LLM(path, kernels=native_kernels, threads=2, kv_tokens=8192)
    long = [(7 * i + 3) % 380 + 4 for i in range(700)]
    prompts = [long, long[100:400], IDS[:12], IDS[5:20], IDS[3:7], IDS[1:9]]
    with llm.engine.scratch_blocks(len(long) + 1, len(prompts)) as tables:
        for ids, table in zip(prompts, tables):
            llm.runner.run([SeqChunk(ids, 0, table, Logits.NONE)])
        step = [SeqChunk([9], len(ids), t, Logits.LAST, prompt_len=0) for ids, t in zip(prompts, tables)]
        six, two = llm.runner.run(step), llm.runner.run(step[:2])
        alone = torch.cat([llm.runner.run([chunk]) for chunk in step])
    assert torch.equal(six, alone) and torch.equal(two, alone[:2])
    exact = LLM(path, reference=True).logits(long + [9], first=len(long))
    assert compare_logits(exact, alone[:1]).mean_kl <= 1e-2


def test_a_prompt_prefilled_again_after_a_longer_one_gives_the_same_logits(tmp_path):
    """The RoPE tables grow to the longest position seen (a decode step past the prompt regrows them); a prompt's
    keys must not depend on that history. (With torch's cos, about one process in eight built the tables of the same
    positions differently in the last bit: the prompt's second prefill then gave other logits.)"""
    path = str(write_tiny_model(tmp_path / "m.gguf", "llama", tile_types=True, context_length=1024))
    llm = LLM(path, threads=2, kv_tokens=8192)
    long = [(7 * i + 3) % 380 + 4 for i in range(700)]
    logits = []
    for _ in range(3):
        with llm.engine.scratch_blocks(len(long) + 1) as (table,):
            llm.runner.run([SeqChunk(long, 0, table, Logits.NONE)])
            logits.append(llm.runner.run([SeqChunk([9], len(long), table, Logits.LAST, prompt_len=0)]))
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
    rotary = llm.model._rotaries[0]
    grown = rotary.factors(torch.arange(700))
    rotary._cos = torch.empty(0)  # rebuilt at another length
    rotary.factors(torch.arange(3000))
    assert all(torch.equal(a, b) for a, b in zip(grown, rotary.factors(torch.arange(700))))


def test_every_variant_builds_where_the_cpu_runs_it():
    """Where this CPU executes a variant and a C compiler exists, its library must build, match the ctypes
    mirror of the structs and pass its self-test: a source that stops compiling would otherwise only show up as
    a slow fallback. The best one is what `auto` picks."""
    from forwardpass.kernels import native, select

    if not shutil.which("cc") and not shutil.which("gcc"):
        pytest.skip("no C compiler here")
    if select.resolve_cpu() == "torch":
        pytest.skip("native kernels switched off (FORWARDPASS_CPU=torch)")
    built = [select.load_library(v) for v in native.runnable_variants()]
    assert all(lib is not None for lib in built)
    if built:
        assert select.select_kernels("auto") is built[0]


def test_asking_for_a_variant_this_cpu_lacks_is_a_clear_error():
    from forwardpass.kernels import native, select

    missing = [v for v in native.VARIANTS if not native.cpu_runs(v)]
    with pytest.raises(ValueError, match=f"cannot execute the {missing[0]} kernels"):
        select.select_kernels(missing[0])
    with pytest.raises(ValueError, match="cpu must be one of"):
        select.select_kernels("sse2")
    assert select.select_kernels("torch") is None


def test_a_struct_layout_mismatch_is_refused(native_lib, monkeypatch):
    """The library reports its struct layout; a ctypes mirror out of step with forwardpass.h is refused at load."""
    from forwardpass.kernels import native

    assert native.abi_layout()[:3] == [
        ctypes.sizeof(native.TMat),
        ctypes.sizeof(native.DLayer),
        ctypes.sizeof(native.DModel),
    ]
    native.NativeLibrary(native_lib.path, native_lib.variant)  # in step: loads
    monkeypatch.setattr(native, "abi_layout", lambda: [0] * 3)
    with pytest.raises(native.ABIError, match="differs from the ctypes mirror"):
        native.NativeLibrary(native_lib.path, native_lib.variant)


def _logging_compiler(tmp_path, log) -> str:
    """A `cc` that records each call, then runs the real compiler."""
    real = shutil.which("cc") or shutil.which("gcc")
    cc = tmp_path / "cc"
    cc.write_text(f'#!/bin/sh\necho build >> {log}\nexec {real} "$@"\n')
    cc.chmod(0o755)
    return str(cc)


@pytest.mark.slow
def test_parallel_processes_build_a_variant_once(tmp_path):
    """Two processes asking for the same build at once: one compiles (under the lock, into a temporary file in the
    cache folder itself), the other waits and loads it; nothing is left behind but the library."""
    import subprocess
    import sys

    from forwardpass.kernels import native

    if not native.runnable_variants() or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no native build for this CPU, or no C compiler")
    variant = native.runnable_variants()[-1]
    log = tmp_path / "calls.log"
    env = {**os.environ, "FORWARDPASS_HOME": str(tmp_path / "home"), "CC": _logging_compiler(tmp_path, log)}
    code = f"from forwardpass.kernels import native; print(native.build({variant!r}))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    paths = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert paths[0] == paths[1] and paths[0].startswith(str(tmp_path / "home" / "kernels"))
    assert log.read_text().count("build") == 1
    left = sorted(p.name for p in (tmp_path / "home" / "kernels").iterdir() if not p.name.endswith(".lock"))
    assert left == [os.path.basename(paths[0])]


def test_a_failed_build_warns_with_the_compiler_output(tmp_path, monkeypatch, caplog):
    from forwardpass.kernels import native, select

    if not native.runnable_variants():
        pytest.skip("no native build for this CPU")
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'fatal error: immintrin.h: No such file' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("FORWARDPASS_HOME", str(tmp_path / "home"))
    with pytest.raises(native.BuildError, match="immintrin.h: No such file"):
        native.build(native.runnable_variants()[0])
    with caplog.at_level("WARNING", logger="forwardpass.kernels.select"):
        assert select._load_library.__wrapped__(native.runnable_variants()[0], False) is None
    assert "PyTorch layers run instead" in caplog.text and "immintrin.h" in caplog.text
    assert not list((tmp_path / "home" / "kernels").glob("*.so")) and not list(
        (tmp_path / "home" / "kernels").glob("*.tmp")
    )


@pytest.mark.parametrize("one_is_faster", [True, False])
def test_adaptive_threads_follow_the_faster_count(monkeypatch, one_is_faster):
    """With a busy neighbour one thread can beat two (the step waits for its slowest thread at every barrier):
    the step's thread count follows the measured times, and keeps trying the other count."""
    from forwardpass.kernels.native_decoder import AdaptiveThreads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    chooser, picks = AdaptiveThreads(), []
    for _ in range(1000):
        n = chooser.pick(1)
        picks.append(n)
        chooser.record(1, n, (1.0 if n == 1 else 1.8) if one_is_faster else (1.0 if n == 2 else 1.7))
    best = 1 if one_is_faster else 2
    assert picks[:3] == [2, 2, 1]  # two warm-up steps on the full count, then one thread is tried
    assert picks[-600:].count(best) >= 590 and picks[-600:].count(3 - best) >= 2  # exploits, still explores
    # one thread, in use beside a neighbour, tries the full count every 64 steps (to find the cores free again);
    # the full count, 1.7x faster, tries one thread every 256 only (each try is a slow step)
    assert picks[-600:].count(3 - best) == (600 // 64 if one_is_faster else 600 // 256)
    assert chooser.pick(64) == 2  # another size class starts over


def test_adaptive_threads_ride_out_a_slow_step_and_follow_a_lasting_change(monkeypatch):
    """One step slowed 10x by the host (not a busy neighbour) keeps two threads; when one thread becomes the faster
    and later two again, the choice follows within a few tries (the count not in use is timed afresh)."""
    from forwardpass.kernels.native_decoder import AdaptiveThreads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    chooser, picks = AdaptiveThreads(), []
    for step in range(900):
        n = chooser.pick(1)
        picks.append(n)
        loaded = 300 <= step < 600  # a busy neighbour: two threads slower than one
        seconds = (1.6 if n == 1 else 3.0) if loaded else (1.6 if n == 1 else 1.0)
        chooser.record(1, n, 12.0 if step == 100 and n == 2 else seconds)
    assert picks[100:300].count(1) <= 8  # the slow step moved nothing: explorations only
    assert picks[300:600].count(2) <= 30 and picks[380:600].count(2) <= 10
    assert picks[600:900].count(1) <= 80 and picks[700:900].count(1) <= 8
