"""The engine: batching, prefix caching, chunked prefill, forking, preemption and aborts keep outputs exact."""

from __future__ import annotations

import pytest
import torch
from tiny_models import write_tiny_model

from forwardpass import LLM, SamplingParams

PROMPTS = [[4 + (i * 7 + j * 3) % 300 for j in range(5 + 9 * i)] for i in range(8)]
SHARED = [4 + (j * 11) % 300 for j in range(40)]  # a 40-token "system prompt"


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=CUDA)])
def device(request) -> str:
    """On CUDA every step runs the PyTorch layers, which must be as batch-invariant as the native CPU step."""
    return request.param


@pytest.fixture(scope="module", params=["tile-types", pytest.param("mixed-types", marks=pytest.mark.slow)])
def tiny_path(tmp_path_factory, request) -> str:
    """Mixed quant types decode through the PyTorch layers; tile types through the native decode step (on CPU).
    The PyTorch layers are several times slower here: the working loop runs them in test_generate.py and
    test_models.py, the full suite here too."""
    tiles = request.param == "tile-types"
    return str(write_tiny_model(tmp_path_factory.mktemp("engine") / "qwen3.gguf", "qwen3", seed=5, tile_types=tiles))


def greedy(n: int = 20) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def outputs(llm: LLM, prompts, params) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def solo(tiny_path, device) -> list[list[int]]:
    llm = LLM(tiny_path, ctx=256, enable_prefix_caching=False, device=device)
    return [outputs(llm, [p], greedy())[0] for p in PROMPTS]


@pytest.mark.parametrize("chunk", [16, 256])
def test_batched_and_chunked_equal_solo(tiny_path, device, solo, chunk):
    llm = LLM(tiny_path, ctx=256, max_num_batched_tokens=chunk, device=device)
    assert outputs(llm, PROMPTS, greedy()) == solo
    assert llm.engine.block_manager.num_used == 0


def test_prefix_cache_hit_equals_miss(tiny_path, device):
    prompts = [SHARED + p for p in PROMPTS[:4]]
    cold = LLM(tiny_path, ctx=256, enable_prefix_caching=False, device=device)
    expected = [outputs(cold, [p], greedy())[0] for p in prompts]
    warm = LLM(tiny_path, ctx=256, device=device)
    outputs(warm, [SHARED + [7]], greedy(2))  # leaves SHARED's full blocks in the cache
    result = warm.generate(prompts, greedy())
    assert [o.token_ids for o in result] == expected
    assert all(o.num_cached_tokens == 32 for o in result)  # two full 16-token blocks reused
    assert warm.engine.stats().prefix_cache_hit_rate > 0


def test_a_whole_cached_prompt_runs_only_its_last_token(tiny_path, device):
    """A block-aligned prompt found whole in the cache runs one token (its last, in a copy of the last block:
    the cached block is still another request's) and continues as a cold run does."""
    prompt = SHARED[:32]
    cold = LLM(tiny_path, ctx=256, enable_prefix_caching=False, device=device)
    expected = outputs(cold, [prompt], greedy())[0]
    warm = LLM(tiny_path, ctx=256, device=device)
    engine = warm.engine
    first = engine.add_request(prompt, greedy(40))
    engine.step()  # the prompt computed: both blocks named, and `first` keeps decoding beside the next ones
    again = [engine.add_request(prompt, greedy()) for _ in range(2)]
    engine.step()
    seqs = [r.completions[0].seq for r in again]
    assert all(s.num_cached == 31 for s in seqs)
    assert all(s.block_table[0] == first.completions[0].seq.block_table[0] for s in seqs)
    assert len({first.completions[0].seq.block_table[1], *(s.block_table[1] for s in seqs)}) == 3
    while engine.has_unfinished():
        engine.step()
    assert [r.completions[0].output.token_ids for r in again] == [expected, expected]
    assert first.completions[0].output.token_ids[:20] == expected
    assert engine.block_manager.num_used == 0


def test_n_samples_share_prompt_blocks(tiny_path, device):
    llm = LLM(tiny_path, ctx=256, device=device)
    engine = llm.engine
    request = engine.add_request(SHARED, SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True))
    engine.step()  # computes the prompt once, then forks
    seqs = [c.seq for c in request.completions]
    assert all(s.block_table[:2] == seqs[0].block_table[:2] for s in seqs)
    assert all(engine.block_manager.pools[0].ref_counts[b] == 4 for b in seqs[0].block_table[:2])
    assert len({s.block_table[2] for s in seqs}) == 4  # the partial block was copied per sample
    while engine.has_unfinished():
        engine.step()
    first = [c.output.token_ids for c in request.completions]
    again = llm.generate([SHARED], SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True))
    assert [o.token_ids for o in again[0].outputs] == first
    # forking reproduces what each sample would be computed alone (same prompt KV, same generator)
    single = llm.generate([SHARED], SamplingParams(n=1, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True))
    assert single[0].token_ids == first[0]
    assert engine.block_manager.num_used == 0


def test_preemption_keeps_outputs_identical(tiny_path, device, solo):
    llm = LLM(tiny_path, ctx=128, kv_tokens=128, device=device)  # 8 blocks for 8 sequences that need up to 6 each
    assert outputs(llm, PROMPTS, greedy()) == solo
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.block_manager.num_used == 0


def test_pool_is_all_free_after_completions_aborts_and_preemptions(tiny_path, device):
    llm = LLM(tiny_path, ctx=128, kv_tokens=128, device=device)
    engine = llm.engine
    reqs = [engine.add_request(p, greedy(30)) for p in PROMPTS]
    for step in range(12):
        engine.step()
        if step == 3:
            engine.abort(reqs[1].request_id)  # mid-decode or mid-prefill
            engine.abort(reqs[7].request_id)  # possibly still queued
    engine.abort(reqs[2].request_id)
    while engine.has_unfinished():
        engine.step()
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.running == 0 and stats.waiting == 0
    assert engine.block_manager.num_free == engine.block_manager.num_blocks


def test_kv_memory_bounds_the_cache(tiny_path):
    """`kv_memory` sizes the pool in bytes: the cache never takes more, and too little for one request of ctx
    tokens is a clear error."""
    probe = LLM(tiny_path, ctx=128, kv_tokens=128).runner.cache
    token_bytes = 2 * sum(k.element_size() * k[0].numel() for k in probe.k)  # one token: keys and values, all layers
    budget = 40 * 16 * token_bytes + 100  # 40 blocks of 16 tokens, and a little that buys no whole block
    llm = LLM(tiny_path, ctx=128, kv_memory=budget)
    cache = llm.runner.cache
    used = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert budget - 16 * token_bytes < used <= budget
    assert outputs(llm, PROMPTS[:2], greedy(8))  # and it runs
    with pytest.raises(ValueError, match="cannot hold one request of ctx 128"):
        LLM(tiny_path, ctx=128, kv_memory=7 * 16 * token_bytes)  # 7 blocks for a context of 8
    with pytest.raises(ValueError, match="not both"):
        LLM(tiny_path, kv_tokens=128, kv_memory=budget)
    with pytest.raises(ValueError, match="kv_memory must be a positive integer"):
        LLM(tiny_path, kv_memory=0)
