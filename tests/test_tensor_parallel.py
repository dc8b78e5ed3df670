"""Tensor parallelism: the plan, the weight slices, two ranks against one, batching, shutdown and a dead worker.

No rank sums a partial product (`attn_output` and `ffn_down` are split by output rows over the gathered input), so
every value is computed as one process computes it. On the fast path with tiled weights every rank runs the native
one-call step over its part (the C step calls back for the gathers): two ranks' logits are bit-identical to one
process's default engine (its native step). Where the step cannot run (weights it does not tile) the ranks run the
per-layer path, bit-identical to one process's per-layer path.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from tiny_models import write_tiny_model

from forwardpass import LLM, SamplingParams, TensorParallelError
from forwardpass.gguf.dequant import block_info
from forwardpass.gguf.reader import GGUFFile
from forwardpass.gguf.weights import WeightStore
from forwardpass.kernels.native_decoder import StepError
from forwardpass.parallel.plan import plan_shards
from forwardpass.parallel.shard import output_rows, slice_weight

IDS = [5, 9, 33, 70, 100, 200, 7, 8, 9, 10, 300, 301, 17, 18, 19, 20, 21]
PROMPTS = [[4 + (i * 7 + j * 3) % 300 for j in range(5 + 9 * i)] for i in range(8)]  # 8 prompts, 5..68 tokens


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def greedy(n: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def gone(pid: int, wait_s: float = 30.0) -> bool:
    """Whether process `pid` has exited (zombies count as exited), waiting up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


# ---- the plan (no processes) ----


def test_plan_even_uneven_and_replicated_heads():
    even = plan_shards(4, 2, 64, 512, 32, 32, 2)
    assert [(s.q_heads, s.kv_heads, s.ff) for s in even] == [
        (range(0, 2), range(0, 1), range(0, 256)),
        (range(2, 4), range(1, 2), range(256, 512)),
    ]
    smol = plan_shards(9, 3, 64, 1536, 32, 32, 2)  # SmolLM2-135M: 3 KV heads on 2 ranks
    assert [(s.q_heads, s.kv_heads) for s in smol] == [(range(0, 6), range(0, 2)), (range(6, 9), range(2, 3))]
    one_kv = plan_shards(4, 1, 256, 2048, 256, 256, 2)  # Gemma 3 270M: its one KV head on both ranks
    assert [(s.q_heads, s.kv_heads) for s in one_kv] == [(range(0, 2), range(0, 1)), (range(2, 4), range(0, 1))]
    ff = plan_shards(14, 2, 64, 4864, 32, 256, 2)  # Qwen2.5 0.5B: 19 blocks of 256 FFN columns split 10 / 9
    assert [len(s.ff) for s in ff] == [2560, 2304]


@pytest.mark.parametrize(
    "args, message",
    [
        ((9, 3, 64, 1536, 32, 32, 4), "cannot split the model's 3 KV heads"),
        ((4, 2, 64, 512, 256, 32, 2), "inside a 256-column block of attn_output"),
        ((4, 2, 64, 512, 32, 256, 4), "more than the 2 blocks"),
    ],
)
def test_plan_refuses_what_cannot_split(args, message):
    with pytest.raises(ValueError, match=message):
        plan_shards(*args)


def test_output_rows_fall_on_tile_boundaries():
    assert output_rows(576, 2) == [range(0, 288), range(288, 576)]  # SmolLM2's d_model: 36 tiles, 18 each
    assert output_rows(960, 2) == [range(0, 480), range(480, 960)]
    assert output_rows(80, 3) == [range(0, 32), range(32, 64), range(64, 80)]  # 5 tiles: 2, 2, 1
    assert output_rows(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]  # not tiled: plain rows


def one_process_layers(path: str, **kwargs) -> LLM:
    """One process running the per-layer path, as each rank does (the native one-call step off)."""
    llm = LLM(path, **kwargs)
    llm.model.native_decoder = None
    return llm


def test_slice_weight_keeps_blocks_whole(tmp_path):
    path = write_tiny_model(tmp_path / "llama.gguf", "llama")
    store = WeightStore(GGUFFile(str(path)))
    for name in ("blk.0.ffn_down.weight", "blk.0.attn_q.weight", "blk.1.attn_output.weight", "blk.1.ffn_up.weight"):
        w = store.get(name, tuple(store.gguf.tensors[name].shape))
        full = w.dequantize()
        n, k = w.shape
        torch.testing.assert_close(
            slice_weight(w, 0, n // 4, n // 2).dequantize(), full[n // 4 : n // 2], rtol=0, atol=0
        )
        if k // 2 % block_info(w.ggml_type)[0] == 0:
            torch.testing.assert_close(slice_weight(w, 1, k // 2, k).dequantize(), full[:, k // 2 :], rtol=0, atol=0)
    q4k = store.get("blk.0.attn_q.weight", (256, 256))  # Q4_K: blocks of 256 columns
    with pytest.raises(ValueError, match="cut a block of 256"):
        slice_weight(q4k, 1, 0, 128)


def test_unsplittable_model_fails_before_any_process(tmp_path):
    path = write_tiny_model(tmp_path / "llama.gguf", "llama")  # 2 KV heads
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match="tensor_parallel_size 3 cannot split"):
        LLM(str(path), tensor_parallel_size=3)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    with pytest.raises(ValueError, match="tensor_parallel_size must be an integer"):
        LLM(str(path), tensor_parallel_size=0)


# ---- two ranks against one ----


@pytest.mark.parametrize(
    "arch", ["llama", *(pytest.param(a, marks=pytest.mark.slow) for a in ("qwen2", "qwen3", "gemma3"))]
)
def test_reference_logits_match_one_rank(tmp_path, arch):
    """Every architecture and quant type of the fixtures, GQA and a replicated KV head (qwen3, gemma3: one KV
    head, two query heads): float32 math. No sums are split, so only the BLAS could part them (a narrower output
    blocked differently): measured bit-identical here, asserted to float32 rounding."""
    path = str(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    one = LLM(path, reference=True, threads=2).logits(IDS)
    tp = LLM(path, reference=True, threads=2, tensor_parallel_size=2)
    try:
        assert rel(one, tp.logits(IDS)) < 1e-5
    finally:
        tp.close()


@pytest.fixture(scope="module")
def tile_llama(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("tp") / "llama.gguf", "llama", tile_types=True))


@pytest.fixture(scope="module")
def tp_llama(tile_llama):
    llm = LLM(tile_llama, threads=2, tensor_parallel_size=2, ctx=256)
    yield llm
    llm.close()


def runs_native_step(llm: LLM) -> bool:
    """Whether every rank of `llm` built the native one-call step (rank 0 here, the workers as they reported)."""
    return llm.model.native_decoder is not None and all(llm.runner.workers.native_step)


def test_fast_logits_equal_one_rank(tile_llama, tp_llama):
    """Every rank runs the native one-call step over its part: the logits are bit-identical to one process's
    default engine (its native step over the whole model), and so are 8 prompts' greedy continuations, batched."""
    assert runs_native_step(tp_llama) and tp_llama.runner.workers.native_step == [True]
    one = LLM(tile_llama, threads=2, ctx=256)
    assert one.model.native_decoder is not None
    expected = one.logits(IDS)
    before = tp_llama.model.native_decoder.runs
    got = tp_llama.logits(IDS)
    assert tp_llama.model.native_decoder.runs > before  # it ran the native step, not the per-layer path
    assert torch.equal(got, expected)
    tokens = [o.outputs[0].token_ids for o in one.generate(PROMPTS, greedy())]
    assert [o.outputs[0].token_ids for o in tp_llama.generate(PROMPTS, greedy())] == tokens


@pytest.mark.parametrize("arch", ["gemma3", *(pytest.param(a, marks=pytest.mark.slow) for a in ("qwen2", "qwen3"))])
def test_native_step_logits_equal_one_process_every_architecture(tmp_path, arch):
    """The other tiled fixtures through every rank's native step (gemma3: sandwich norms, GELU, sliding windows
    and one KV head held by both ranks; qwen2: q/k/v biases; qwen3: q/k norms): bit-identical to one process's
    default engine, prompt and generated tokens."""
    path = str(write_tiny_model(tmp_path / f"{arch}.gguf", arch, tile_types=True))
    one = LLM(path, threads=2)
    assert one.model.native_decoder is not None
    expected = one.logits(IDS)
    tokens = [o.outputs[0].token_ids for o in one.generate(PROMPTS[:4], greedy(8))]
    del one
    tp = LLM(path, threads=2, tensor_parallel_size=2)
    try:
        assert runs_native_step(tp)
        assert torch.equal(tp.logits(IDS), expected)
        assert [o.outputs[0].token_ids for o in tp.generate(PROMPTS[:4], greedy(8))] == tokens
    finally:
        tp.close()


@pytest.mark.parametrize("arch", ["gemma3", *(pytest.param(a, marks=pytest.mark.slow) for a in ("qwen2", "qwen3"))])
def test_per_layer_logits_equal_one_rank_every_architecture(tmp_path, arch):
    """Fixtures whose quant types the native step does not tile: every rank runs the per-layer path (the native
    Linear kernels, `SplitOutputLinear`), bit-identical to one process's per-layer path."""
    path = str(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    expected = one_process_layers(path, threads=2).logits(IDS)
    tp = LLM(path, threads=2, tensor_parallel_size=2)
    try:
        assert tp.model.native_decoder is None and tp.runner.workers.native_step == [False]
        assert torch.equal(tp.logits(IDS), expected)
    finally:
        tp.close()


def test_ranks_that_disagree_on_the_native_step_are_refused(tile_llama, monkeypatch):
    """Ranks on different paths would pair their gathers up but not their math: refused at start, workers gone."""
    from forwardpass.parallel import runner

    load = runner.load_rank

    def without_native_step(*args, **kwargs):
        model = load(*args, **kwargs)
        model.native_decoder = None  # rank 0 only: the spawned workers load as usual
        return model

    monkeypatch.setattr(runner, "load_rank", without_native_step)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(TensorParallelError, match="disagree on the native step"):
        LLM(tile_llama, threads=2, tensor_parallel_size=2, ctx=256)
    workers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    workers = [p for p in workers if "spawn_main" in " ".join(p.cmdline())]  # not multiprocessing's resource tracker
    assert all(gone(p.pid, 10.0) for p in workers)


class OneRankGather:
    """A `StepGather` of a group of one: the native step's gather path in one process (each gather the identity,
    counted; `fail_at`: the gather call that raises)."""

    rank = 0

    def __init__(self, model, fail_at: int | None = None) -> None:
        c = model.config
        self.q, self.ff, self.rows = [c.n_heads * c.head_dim], [c.n_ff], [c.d_model]
        self.calls, self.fail_at = 0, fail_at

    def split(self, linear):
        return linear, self.q if linear.in_features == self.q[0] else self.ff, self.rows

    def all_gather_columns(self, x, widths, out):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the group is gone")
        assert widths in (self.q, self.ff, self.rows) and x.shape[1] == widths[0] and out.shape == x.shape
        return out.copy_(x)


@dataclasses.dataclass
class OneRankLoad:
    gather: OneRankGather

    def native_gather(self) -> OneRankGather:
        return self.gather


def test_native_step_gather_path_in_one_process(tile_llama):
    """The native step's tensor-parallel code path (gathered buffers, local output rows, the callback) with a group
    of one: bit-identical to the plain step, 4 gathers per layer; a gather that raises is a clear error."""
    llm = LLM(tile_llama, threads=2, ctx=256)
    model = llm.model
    expected = llm.logits(IDS)
    plain = model.native_decoder
    gather = OneRankGather(model)
    model.options = dataclasses.replace(model.options, parallel=OneRankLoad(gather))
    model.native_decoder = model._native_decoder()
    assert model.native_decoder is not None and model.native_decoder.gather is gather
    assert torch.equal(llm.logits(IDS), expected)
    assert gather.calls == 4 * model.config.n_layers
    gather.calls, gather.fail_at = 0, 5
    with pytest.raises(StepError, match="gather of the native step failed") as info:
        llm.logits(IDS)
    assert "the group is gone" in str(info.value.__cause__)
    assert gather.calls == 5  # the later gathers were skipped
    model.native_decoder = plain
    assert torch.equal(llm.logits(IDS), expected)


def test_reference_greedy_tokens_match_one_rank(tile_llama):
    """Float32 math: the same greedy tokens as one process for 8 prompts, batched."""
    one = LLM(tile_llama, reference=True, threads=2, ctx=256)
    expected = [o.outputs[0].token_ids for o in one.generate(PROMPTS, greedy())]
    tp = LLM(tile_llama, reference=True, threads=2, ctx=256, tensor_parallel_size=2)
    try:
        assert [o.outputs[0].token_ids for o in tp.generate(PROMPTS, greedy())] == expected
    finally:
        tp.close()


def test_batched_equals_alone_under_tensor_parallel(tp_llama):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, n=2)  # n=2: forks copy KV blocks
    together = [[c.token_ids for c in o.outputs] for o in tp_llama.generate(PROMPTS, params)]
    alone = [[c.token_ids for c in tp_llama.generate([p], params)[0].outputs] for p in PROMPTS]
    assert together == alone
    embedded = tp_llama.embed([PROMPTS[1], PROMPTS[2]])
    assert embedded.shape == (2, 256) and torch.isfinite(embedded).all()
    assert tp_llama.engine.block_manager.num_used == 0


# ---- processes: shutdown, a parent that dies, a worker that dies ----


def test_close_stops_every_worker(tile_llama):
    llm = LLM(tile_llama, threads=2, tensor_parallel_size=2, ctx=256)
    pids = [p.pid for p in llm.runner.workers.procs]
    assert llm.generate([PROMPTS[0]], greedy(4))[0].outputs[0].token_ids
    llm.close()
    assert all(gone(pid, 10.0) for pid in pids)
    with pytest.raises(TensorParallelError, match="was closed"):
        llm.generate([PROMPTS[0]], greedy(4))


@pytest.mark.parametrize("how", ["exit", pytest.param("sigkill", marks=pytest.mark.slow)])
def test_workers_never_outlive_their_parent(tile_llama, how):
    script = (
        "import os, signal, sys\n"
        "from forwardpass import LLM\n"
        "if __name__ == '__main__':\n"
        f"    llm = LLM({tile_llama!r}, threads=2, tensor_parallel_size=2, ctx=256)\n"
        "    print(*(p.pid for p in llm.runner.workers.procs), flush=True)\n"
        f"    os.kill(os.getpid(), signal.SIGKILL) if {how == 'sigkill'} else sys.exit(0)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    pids = [int(p) for p in out.stdout.split()]
    assert pids, out.stderr
    assert all(gone(pid) for pid in pids)


def test_dead_worker_is_a_clear_error_not_a_hang(tile_llama):
    llm = LLM(tile_llama, threads=2, tensor_parallel_size=2, ctx=256)
    try:
        worker = llm.runner.workers.procs[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        with pytest.raises(TensorParallelError, match="rank 1 .* exited unexpectedly"):
            llm.generate([PROMPTS[0]], greedy(4))
        with pytest.raises(TensorParallelError):  # and stays broken
            llm.generate([PROMPTS[0]], greedy(4))
    finally:
        llm.close()


# ---- the real model ----

SENTENCES = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "The three primary colors are",
    "Water boils at",
    "In 1492, Columbus",
    "The quick brown fox",
    "To make a cup of tea,",
]


@pytest.mark.slow
def test_smollm2_two_ranks_match_one(smollm2_path):
    """SmolLM2-135M splits unevenly (3 KV heads: 2 and 1). Fast path, every rank in its native step: logits
    bit-identical to one process's default engine and the same greedy tokens for 8 prompts, batched as alone;
    reference path: within 1e-5 (its float32 GEMMs on a share of the output rows) and the same greedy tokens."""
    default = LLM(smollm2_path, threads=2)
    assert default.model.native_decoder is not None
    ids = default.encode_prompt("The history of the Roman empire spans many centuries, beginning with")
    logits = default.logits(ids)
    tokens = [o.outputs[0].token_ids for o in default.generate(SENTENCES, greedy(16))]
    del default
    fast = LLM(smollm2_path, threads=2, tensor_parallel_size=2)
    try:
        assert runs_native_step(fast)
        assert torch.equal(fast.logits(ids), logits)
        together = [o.outputs[0].token_ids for o in fast.generate(SENTENCES, greedy(16))]
        assert together == tokens
        assert [fast.generate([s], greedy(16))[0].outputs[0].token_ids for s in SENTENCES] == together
    finally:
        fast.close()
    one = LLM(smollm2_path, reference=True, threads=2)
    logits = one.logits(ids)
    tokens = [o.outputs[0].token_ids for o in one.generate(SENTENCES, greedy(16))]
    del one
    tp = LLM(smollm2_path, reference=True, threads=2, tensor_parallel_size=2)
    try:
        assert rel(logits, tp.logits(ids)) < 1e-5
        assert [o.outputs[0].token_ids for o in tp.generate(SENTENCES, greedy(16))] == tokens
    finally:
        tp.close()
