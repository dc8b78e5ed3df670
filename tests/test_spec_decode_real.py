"""Speculative decoding on the real models: greedy output equals the plain engine's token for token, batched and
alone, with n-gram proposals and with a draft model; a draft with another vocabulary is refused at load."""

from __future__ import annotations

import pytest

from forwardpass import LLM, SamplingParams
from forwardpass.bench import PASSAGE
from forwardpass.registry import cached_path, resolve_model

pytestmark = pytest.mark.slow

QUESTIONS = [
    f"Here is a passage:\n\n{PASSAGE}\n\nRepeat the passage above exactly.",
    "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
    "Name three rivers in Europe and one fact about each.",
]
NGRAM = {"method": "ngram", "num_speculative_tokens": 4}


def prompts(llm: LLM) -> list[list[int]]:
    return [llm.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]


def greedy(n: int = 64) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n)


def tokens(llm: LLM, ps, params) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(ps, params)]


def check_equal(path: str, spec: dict, cpu: str | None = None, n: int = 64) -> LLM:
    plain = LLM(path, ctx=2048, cpu=cpu, enable_prefix_caching=False)
    ps = prompts(plain)
    solo = [tokens(plain, [p], greedy(n))[0] for p in ps]
    del plain
    llm = LLM(path, ctx=2048, cpu=cpu, speculative_config=spec)
    assert tokens(llm, ps, greedy(n)) == solo  # batched
    assert [tokens(llm, [p], greedy(n))[0] for p in ps] == solo  # alone
    assert llm.engine.block_manager.num_used == 0
    return llm


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_ngram_equals_plain_on_real_models(name):
    llm = check_equal(resolve_model(name), NGRAM)
    stats = llm.engine.stats().spec
    assert stats.accepted > 0.5 * stats.proposed  # the copy prompt is copied


def test_ngram_equals_plain_on_the_torch_fallback(smollm2_path):
    check_equal(smollm2_path, NGRAM, cpu="torch", n=32)


def test_draft_model_equals_plain(smollm2_path):
    """SmolLM2 drafting for itself (the only pair of real models here that always sits in the cache)."""
    llm = check_equal(smollm2_path, {"method": "draft", "model": smollm2_path, "num_speculative_tokens": 4})
    assert llm.engine.stats().spec.acceptance_rate > 0.8
    assert llm.draft.engine.block_manager.num_used == 0


@pytest.mark.skipif(
    not cached_path("qwen2.5-coder-1.5b-instruct").is_file(), reason="pull qwen2.5-coder-1.5b-instruct first"
)
def test_qwen_coder_05b_drafts_for_15b():
    spec = {"method": "draft", "model": "qwen2.5-coder-0.5b-instruct", "num_speculative_tokens": 4}
    llm = check_equal(resolve_model("qwen2.5-coder-1.5b-instruct"), spec, n=32)
    assert llm.engine.stats().spec.accepted > 0


def test_draft_with_another_vocabulary_is_refused(smollm2_path):
    spec = {"method": "draft", "model": "qwen2.5-coder-0.5b-instruct"}
    with pytest.raises(ValueError, match="same vocabulary"):
        LLM(smollm2_path, ctx=512, speculative_config=spec)
