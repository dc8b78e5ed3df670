"""Deterministic batching on the real models: a request's greedy tokens never depend on what runs beside it."""

from __future__ import annotations

import pytest
import torch

from forwardpass import LLM, SamplingParams
from forwardpass.fidelity import BATCH_SYSTEM, BATCH_TOPICS
from forwardpass.kernels.select import resolve_cpu, select_kernels

NATIVE_DEFAULT = select_kernels() if resolve_cpu() != "torch" else None


def greedy(n: int = 24) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_sixteen_prompts_batched_equal_alone(request, model, device, native_lib, native_kernels):
    """On CPU with every build of the native kernels this CPU runs; CUDA runs none of them (once is enough)."""
    if device == "cuda" and native_lib is not NATIVE_DEFAULT:
        pytest.skip("CUDA runs no CPU kernels: checked once")
    path = request.getfixturevalue(f"{model}_path")
    llm = LLM(path, ctx=1024, enable_prefix_caching=False, device=device, kernels=native_kernels)
    prompts = [llm.encode_prompt(f"{BATCH_SYSTEM}Tell me something about {t}.") for t in BATCH_TOPICS]
    alone = [llm.generate([p], greedy())[0].token_ids for p in prompts]
    together = [o.token_ids for o in llm.generate(prompts, greedy())]
    assert together == alone
    for chunk in (16, 256):
        chunked = LLM(path, ctx=1024, max_num_batched_tokens=chunk, device=device, kernels=native_kernels)
        chunked.generate([llm.encode_prompt(BATCH_SYSTEM + "Hello.")], greedy(2))  # caches the shared prefix
        outs = chunked.generate(prompts, greedy())
        assert [o.token_ids for o in outs] == alone, f"chunk size {chunk}"
        assert all(o.num_cached_tokens > 0 for o in outs)
        assert chunked.engine.block_manager.num_used == 0


@pytest.mark.slow
def test_gemma3_past_its_window_equals_keeping_whole_contexts(gemma3_path):
    """Prompts of ~700 tokens on Gemma 3 (window 512): the local layers release what left their window, in
    chunks and in a batch, and still give the tokens of a run that keeps whole contexts in every layer."""
    from test_engine_sliding import untrimmed

    whole = untrimmed(gemma3_path, ctx=1024, enable_prefix_caching=False)
    story = " ".join(f"{BATCH_SYSTEM}Tell me something about {t}." for t in BATCH_TOPICS)
    prompts = [whole.encode_prompt(f"{story} Now, in one sentence: what about {t}?") for t in BATCH_TOPICS[12:]]
    assert all(len(p) > 600 for p in prompts)
    alone = [whole.generate([p], greedy(32))[0].token_ids for p in prompts]
    trimmed = LLM(gemma3_path, ctx=1024, max_num_batched_tokens=256)
    assert [g.window for g in trimmed.runner.cache.groups] == [0, 512]
    peak = 0
    engine, bm = trimmed.engine, trimmed.engine.block_manager
    requests = [engine.add_request(p, greedy(32)) for p in prompts]
    while engine.has_unfinished():
        engine.step()
        peak = max(peak, bm.pools[1].num_blocks - len(bm.pools[1].free))
    assert [r.completions[0].output.token_ids for r in requests] == alone
    assert peak <= len(prompts) * (512 // 16 + 1) < sum(len(p) + 32 for p in prompts) // 16
    assert bm.num_used == 0
