"""Sliding-window KV groups on a tiny Gemma 3 (five local layers of six, window 20, 16-token blocks): the local
layers keep only their window, yet every output equals a run that keeps whole contexts in every layer.

Every test here carries the marker `kvgroups` and runs on each device this machine has: `pytest -m kvgroups` is the
check of the KV groups on a GPU machine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from tiny_models import write_tiny_model

import forwardpass.llm as llm_module
from forwardpass import LLM, SamplingParams
from forwardpass.engine.block_manager import FREED
from forwardpass.engine.kv_groups import blocks_for, plan_kv_groups
from forwardpass.engine.llm_engine import LLMEngine
from forwardpass.engine.model_runner import ModelRunner
from forwardpass.fidelity import compare_logits
from forwardpass.kernels import KernelChoice
from forwardpass.kernels.select import select_kernels
from forwardpass.models.attention import KVGroup

WINDOW = 20  # the local layers' window: a bit over one block
LOCAL, GLOBAL = (0, 1, 2, 3, 4), (5,)
PROMPTS = [[4 + (i * 7 + j * 3) % 300 for j in range(30 + 23 * i)] for i in range(6)]  # 30 .. 145 tokens
SHARED = [4 + (j * 11) % 300 for j in range(70)]  # a 70-token "system prompt", three and a half windows

pytestmark = pytest.mark.kvgroups


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def untrimmed(path: str, **kw) -> LLM:
    """The model keeping whole contexts in every layer: one KV group, as before groups existed."""

    def one_group(windows, budget, block_size, ctx, *args) -> list[KVGroup]:
        return [KVGroup(0, tuple(range(len(windows))), blocks_for(max(ctx, budget), block_size))]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llm_module, "plan_kv_groups", one_group)
        return LLM(path, **kw)


@dataclass(frozen=True)
class SlidingModel:
    path: str
    device: str
    kernels: KernelChoice | None = None  # None: what LLM picks

    def llm(self, trim: bool = True, **kw) -> LLM:
        """The model on its device; `trim=False`: `untrimmed`."""
        kw.update(device=self.device, kernels=self.kernels)
        return LLM(self.path, **kw) if trim else untrimmed(self.path, **kw)


@pytest.fixture(scope="module", params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(
    scope="module",
    params=[
        "tile-types",
        pytest.param("mixed-types", marks=pytest.mark.slow),
        pytest.param("torch-attention", marks=pytest.mark.slow),
    ],
)
def model(tmp_path_factory, request, device) -> SlidingModel:
    """Mixed types: PyTorch layers, native attention kernel; tile types: the native decode step; torch-attention:
    PyTorch layers and the PyTorch attention fallback (as on CUDA, where every variant runs the PyTorch layers)."""
    if device != "cpu" and request.param == "torch-attention":
        pytest.skip("the PyTorch attention is what CUDA runs anyway")
    tiles = request.param == "tile-types"
    out = write_tiny_model(
        tmp_path_factory.mktemp("swa") / "gemma3.gguf", "gemma3", seed=9, tile_types=tiles, sliding_window=WINDOW
    )
    if request.param == "torch-attention":  # the same Linears, the PyTorch attention (as on CUDA)
        return SlidingModel(str(out), device, KernelChoice(select_kernels(), native_attention=False))
    return SlidingModel(str(out), device)


def greedy(n: int = 40) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def outputs(llm: LLM, prompts, params) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params)]


def peak_usage(llm: LLM) -> list[int]:
    """Record each group's blocks in use while every step runs (after its blocks are reserved)."""
    peak = [0] * len(llm.engine.block_manager.pools)
    run = llm.runner.run

    def counting(chunks):
        for g, pool in enumerate(llm.engine.block_manager.pools):
            peak[g] = max(peak[g], pool.num_blocks - len(pool.free))
        return run(chunks)

    llm.runner.run = counting
    return peak


@pytest.fixture(scope="module")
def solo(model) -> list[list[int]]:
    llm = model.llm(False, ctx=256, enable_prefix_caching=False)
    assert len(llm.runner.cache.groups) == 1
    return [outputs(llm, [p], greedy())[0] for p in PROMPTS]


@pytest.mark.parametrize("chunk", [16, 256])
def test_trimmed_batched_and_chunked_equal_untrimmed_solo(model, solo, chunk):
    # six sequences planned for: the local pool (40 blocks at most) is reused as windows move on, so its block
    # ids soon differ from the global group's (a layer addressing the wrong group's slots would show)
    llm = model.llm(ctx=256, max_num_seqs=6, max_num_batched_tokens=chunk)
    assert [(g.window, g.layers) for g in llm.runner.cache.groups] == [(0, GLOBAL), (WINDOW, LOCAL)]
    assert llm.runner.cache.groups[1].num_blocks < sum(blocks_for(len(p) + 40, 16) for p in PROMPTS)
    assert outputs(llm, PROMPTS, greedy()) == solo
    assert llm.engine.block_manager.num_used == 0


def test_sliding_group_holds_only_the_window(model, solo):
    llm = model.llm(ctx=256, max_num_batched_tokens=16)
    peak = peak_usage(llm)
    assert outputs(llm, [PROMPTS[5]], greedy(100))[0][:40] == solo[5]  # 145 + 100 tokens
    assert peak[0] == blocks_for(245, 16)  # the global group holds the whole context
    assert peak[1] <= blocks_for(WINDOW - 1 + 16, 16) + 1  # the local one a window and a 16-token chunk: 4
    assert llm.engine.block_manager.num_used == 0


def test_free_blocks_are_never_read(model, solo):
    """Released, padding and free blocks hold NaN after every step: nothing may read them."""
    llm = model.llm(ctx=256, max_num_seqs=6, max_num_batched_tokens=16, enable_prefix_caching=False)
    cache, bm = llm.runner.cache, llm.engine.block_manager

    def poison() -> None:
        for group, pool in zip(cache.groups, bm.pools):
            free = torch.tensor(list(pool.free), dtype=torch.int64, device=cache.k[0].device)
            for layer in group.layers:
                for t in (cache.k[layer], cache.v[layer]):
                    t.view(pool.num_blocks, cache.block_size, -1)[free] = float("nan")

    requests = [llm.engine.add_request(p, greedy()) for p in PROMPTS]
    poison()
    while llm.engine.has_unfinished():
        llm.engine.step()
        poison()
    assert [r.completions[0].output.token_ids for r in requests] == solo


def test_prefix_hit_on_a_sliding_model_equals_a_miss(model):
    prompts = [SHARED + p[:10] for p in PROMPTS[:4]]
    cold = model.llm(False, ctx=256, enable_prefix_caching=False)
    expected = [outputs(cold, [p], greedy(30))[0] for p in prompts]
    warm = model.llm(ctx=256)
    outputs(warm, [SHARED + [7]], greedy(2))  # leaves SHARED's four full blocks in the cache
    engine = warm.engine
    requests = [engine.add_request(p, greedy(30)) for p in prompts]
    engine.step()
    # hit at 64: the local layers need only positions 45.. (blocks 2 and 3) of the prefix
    assert all(r.completions[0].seq.block_tables[1][:2] == [FREED, FREED] for r in requests)
    while engine.has_unfinished():
        engine.step()
    assert [r.completions[0].output.token_ids for r in requests] == expected
    assert all(r.completions[0].seq.num_cached == 64 for r in requests)
    assert engine.stats().prefix_cache_hit_rate > 0 and engine.block_manager.num_used == 0


def test_a_whole_cached_prompt_on_a_sliding_model_runs_its_last_token(model):
    prompt = SHARED[:64]
    cold = model.llm(False, ctx=256, enable_prefix_caching=False)
    expected = outputs(cold, [prompt], greedy(30))[0]
    warm = model.llm(ctx=256)
    outputs(warm, [prompt], greedy(2))
    result = warm.generate([prompt, prompt], greedy(30))
    assert [o.token_ids for o in result] == [expected, expected]
    assert all(o.num_cached_tokens == 63 for o in result)  # the last token ran, in a copy of block 3
    assert warm.engine.block_manager.num_used == 0


def test_n_samples_fork_in_every_group(model):
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=60, ignore_eos=True)
    llm = model.llm(ctx=256)
    engine = llm.engine
    request = engine.add_request(SHARED, params)
    engine.step()  # computes the prompt once, then forks
    seqs = [c.seq for c in request.completions]
    for g in (0, 1):
        assert all(s.block_tables[g][:4] == seqs[0].block_tables[g][:4] for s in seqs)
        assert len({s.block_tables[g][4] for s in seqs}) == 4  # the partial block copied per sample
    assert seqs[0].block_tables[1][:3] == [FREED] * 3  # a query at 70 reads positions 51..
    while engine.has_unfinished():
        engine.step()
    first = [c.output.token_ids for c in request.completions]
    assert len({tuple(t) for t in first}) > 1 and engine.block_manager.num_used == 0
    assert [o.token_ids for o in model.llm(False, ctx=256).generate([SHARED], params)[0].outputs] == first
    # one sequence planned for: four forks overflow the local pool and get preempted, with the same samples
    tight = model.llm(ctx=256, kv_tokens=256, max_num_seqs=1, max_num_batched_tokens=32)
    assert tight.runner.cache.groups[1].num_blocks < 4 * 3
    assert [o.token_ids for o in tight.generate([SHARED], params)[0].outputs] == first
    assert tight.engine.scheduler.num_preemptions > 0 and tight.engine.block_manager.num_used == 0


def test_preemption_keeps_outputs_identical(model, solo):
    llm = model.llm(ctx=256, kv_tokens=256, max_num_batched_tokens=32)  # 16 blocks a group for ~80 needed
    assert outputs(llm, PROMPTS, greedy()) == solo
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.block_manager.num_used == 0


def test_pool_is_all_free_after_completions_aborts_and_preemptions(model):
    llm = model.llm(ctx=256, kv_tokens=256, max_num_batched_tokens=32)
    engine = llm.engine
    reqs = [engine.add_request(p, greedy(60)) for p in PROMPTS]
    for step in range(30):
        engine.step()
        if step == 5:
            engine.abort(reqs[1].request_id)  # mid-decode or mid-prefill
            engine.abort(reqs[5].request_id)  # possibly still queued
    engine.abort(reqs[2].request_id)
    while engine.has_unfinished():
        engine.step()
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.running == 0 and stats.waiting == 0
    assert engine.scheduler.num_preemptions > 0
    assert all(len(pool.free) == pool.num_blocks for pool in engine.block_manager.pools)


def test_scoring_runs_in_chunks_through_a_small_local_pool(model):
    ids = [4 + (5 * i) % 300 for i in range(200)]
    llm = model.llm(ctx=256, kv_tokens=64, max_num_seqs=1, max_num_batched_tokens=16)
    assert llm.runner.cache.groups[1].num_blocks < blocks_for(200, 16)  # too small for one pass
    chunked = llm.logits(ids, first=20)
    whole = model.llm(False, ctx=256).logits(ids, first=20)
    assert chunked.shape == whole.shape == (180, llm.vocab_size)
    assert (chunked - whole).abs().max().item() <= 2e-2 * whole.abs().max().item()
    assert compare_logits(whole, chunked).top1 >= 0.95
    assert llm.engine.block_manager.num_used == 0


def test_sizing_splits_the_budget_and_checks_every_group(model):
    llm = model.llm(ctx=256, kv_tokens=256, max_num_seqs=2, max_num_batched_tokens=16)
    cache = llm.runner.cache
    # local: two sequences of a window plus a chunk (9 blocks); global: the rest of 6 layers x 16 blocks
    assert [(g.window, g.num_blocks) for g in cache.groups] == [(0, 6 * 16 - 5 * 9), (WINDOW, 9)]
    per_block = cache.nbytes // (51 + 5 * 9)
    assert cache.nbytes == 6 * 16 * per_block  # the same memory as 16 blocks in every layer
    with pytest.raises(ValueError, match="window"):
        LLMEngine(
            ModelRunner(llm.model, [KVGroup(0, GLOBAL, 16), KVGroup(WINDOW, LOCAL, 2)], 16, torch.bfloat16),
            llm.tokenizer,
            256,
        )
    with pytest.raises(ValueError, match="full context"):
        LLMEngine(
            ModelRunner(llm.model, [KVGroup(0, GLOBAL, 15), KVGroup(WINDOW, LOCAL, 16)], 16, torch.bfloat16),
            llm.tokenizer,
            256,
        )


def test_plan_kv_groups():
    # no sliding layers: one pool of max(ctx, budget) tokens, as always
    assert plan_kv_groups((0, 0, 0), 1000, 16, 512, 64, 512) == [KVGroup(0, (0, 1, 2), 63)]
    assert plan_kv_groups((0, 0, 0), 100, 16, 512, 64, 512) == [KVGroup(0, (0, 1, 2), 32)]
    # a window of the whole context keeps everything: nothing to trim, one group
    assert plan_kv_groups((512, 512, 0), 1024, 16, 512, 4, 64) == [KVGroup(0, (0, 1, 2), 64)]
    # Gemma 3 270m as `forwardpass bench` sizes it: a tiny budget, each group still fits one request
    groups = plan_kv_groups((512,) * 5 + (0,) + (512,) * 5 + (0,) + (512,) * 5 + (0,), 528, 16, 8192, 64, 512)
    assert [(g.window, len(g.layers), g.num_blocks) for g in groups] == [(0, 3, 512), (512, 15, 65)]
    # many sequences planned for: the local group gets its need up to the per-layer share
    groups = plan_kv_groups((512,) * 5 + (0,), 16384, 16, 8192, 64, 512)
    assert [g.num_blocks for g in groups] == [1024, 1024]
    groups = plan_kv_groups((512,) * 5 + (0,), 16384, 16, 8192, 8, 512)
    assert [g.num_blocks for g in groups] == [6 * 1024 - 5 * 304, 8 * 34 + 32]
    # only sliding layers: they need less than the budget, and nothing takes the rest
    assert plan_kv_groups((32, 32), 4096, 16, 4096, 2, 64) == [KVGroup(32, (0, 1), 2 * 4 + 4)]
