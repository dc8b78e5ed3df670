"""`LLM.embed`: pooled final hidden states through the engine, against transformers' hidden states; chunked,
batched next to generating requests, preempted and prefix-cached runs give the same vectors."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import write_tiny_model

from forwardpass import LLM, SamplingParams

INPUTS = [[4 + (i * 7 + j * 3) % 300 for j in range(5 + 19 * i)] for i in range(6)]  # 5 .. 100 tokens


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("embed") / "llama.gguf", "llama", seed=3, tile_types=True))


def hf_hidden(path: str, ids: list[int]) -> torch.Tensor:
    """transformers' final hidden states (after the output norm): (len(ids), d_model)."""
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    with torch.no_grad():
        return model.model(torch.tensor([ids])).last_hidden_state[0]


@pytest.mark.parametrize(
    "pooling_type, method",
    [(None, "mean")] + [pytest.param(*p, marks=pytest.mark.slow) for p in [(1, "mean"), (2, "cls"), (3, "last")]],
)
def test_pooling_matches_transformers(tmp_path, pooling_type, method):
    path = str(write_tiny_model(tmp_path / "m.gguf", "llama", seed=1, pooling_type=pooling_type))
    llm = LLM(path, reference=True, ctx=256)
    assert llm.pooling == method
    ids = INPUTS[2]
    hidden = hf_hidden(path, ids)
    ref = {"mean": hidden.mean(0), "cls": hidden[0], "last": hidden[-1]}[method]
    ref = torch.nn.functional.normalize(ref, dim=0)
    ours = llm.embed([ids])
    assert ours.shape == (1, llm.config.d_model)
    assert torch.allclose(ours[0], ref, atol=2e-5), (ours[0] - ref).abs().max()
    raw = llm.embed([ids], normalize=False)[0]
    assert abs(raw.norm().item() - 1.0) > 1e-3  # normalization is a real step, not a property of the states


def test_embeddings_have_unit_norm_and_differ(tiny_path):
    vecs = LLM(tiny_path, ctx=256).embed(INPUTS)
    assert vecs.shape == (len(INPUTS), 256)
    assert torch.allclose(vecs.norm(dim=1), torch.ones(len(INPUTS)), atol=1e-5)
    sims = vecs @ vecs.T
    assert (sims - torch.eye(len(INPUTS))).abs().max() > 1e-3  # distinct inputs, distinct vectors


def test_chunked_batched_and_alone_agree(tiny_path):
    """One batch, chunks of 16 tokens, or one input at a time: the same vectors."""
    whole = LLM(tiny_path, ctx=256).embed(INPUTS)
    chunked = LLM(tiny_path, ctx=256, max_num_batched_tokens=16).embed(INPUTS)
    llm = LLM(tiny_path, ctx=256)
    alone = torch.cat([llm.embed([x]) for x in INPUTS])
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.allclose(whole, alone, atol=1e-6)


def test_embedding_next_to_generation_changes_neither(tiny_path):
    llm = LLM(tiny_path, ctx=256, max_num_batched_tokens=32)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    gen_alone = [o.token_ids for o in llm.generate(INPUTS[:3], params)]
    emb_alone = llm.embed(INPUTS[3:])
    engine = llm.engine
    gens = [engine.add_request(p, params) for p in INPUTS[:3]]
    embs = [engine.add_embed_request(p, "mean") for p in INPUTS[3:]]
    done: dict[str, object] = {}
    while len(done) < 6:
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert [done[r.request_id].token_ids for r in gens] == gen_alone
    mixed = torch.tensor([done[r.request_id].embedding for r in embs])
    assert torch.allclose(mixed, emb_alone, atol=1e-6)
    assert engine.block_manager.num_used == 0


def test_preemption_and_prefix_cache_keep_vectors(tiny_path):
    """A KV cache too small for all inputs at once preempts some (recomputed from the start); a second run over
    the same inputs finds their blocks cached but mean pooling still computes every position."""
    ref = LLM(tiny_path, ctx=256, enable_prefix_caching=False).embed(INPUTS)
    small = LLM(tiny_path, ctx=128, kv_tokens=128, max_num_batched_tokens=16)  # 8 blocks of 16 tokens
    engine = small.engine
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    gens = [engine.add_request(p, params) for p in INPUTS[1:3]]  # 24 and 43 tokens, growing to 84 and 103
    emb = engine.add_embed_request(INPUTS[5], "mean")  # 100 tokens: the newest, so the one preempted
    while engine.has_unfinished():
        engine.step()
    assert engine.scheduler.num_preemptions > 0 and all(g.finished for g in gens)
    assert torch.allclose(emb.embedding, ref[5], atol=1e-6)
    assert engine.block_manager.num_used == 0
    cached = LLM(tiny_path, ctx=256)
    cached.generate([INPUTS[5] + [7]], SamplingParams(max_tokens=1))  # leaves INPUTS[5]'s blocks cached
    first = cached.engine.add_embed_request(INPUTS[5], "mean")
    while not first.finished:
        cached.engine.step()
    assert first.pooler.seq.num_cached == 0
    assert torch.allclose(first.embedding, ref[5], atol=1e-6)


def test_abort_frees_blocks_and_bad_input_is_refused(tiny_path):
    llm = LLM(tiny_path, ctx=64, max_num_batched_tokens=16)
    request = llm.engine.add_embed_request(INPUTS[3], "mean")
    llm.engine.step()
    assert llm.engine.block_manager.num_used > 0
    llm.engine.abort(request.request_id)
    assert llm.engine.block_manager.num_used == 0 and not llm.engine.has_unfinished()
    with pytest.raises(ValueError, match="out of vocabulary"):
        llm.embed([[10**6]])
    with pytest.raises(ValueError, match="context"):
        llm.embed([INPUTS[5]])  # 100 tokens > ctx 64
    with pytest.raises(ValueError, match="pooling"):
        llm.embed(["x"], pooling="max")
