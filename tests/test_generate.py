"""Generation end to end: greedy parity with transformers, streaming, seeds, stop strings, limits."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import write_tiny_model

from forwardpass import LLM, ContextLengthError, SamplingParams

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=CUDA)])
def tiny(tmp_path_factory, request) -> LLM:
    path = write_tiny_model(tmp_path_factory.mktemp("gen") / "llama.gguf", "llama", seed=3)
    return LLM(str(path), reference=True, ctx=128, device=request.param)


PROMPTS = ["the cat", "hello world, this is", "0123456789", "The quick brown fox"]


def greedy(max_tokens: int = 24, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def test_greedy_is_repeatable_and_batch_independent(tiny):
    together = tiny.generate(PROMPTS, greedy())
    alone = [tiny.generate(p, greedy())[0] for p in PROMPTS]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    assert all(len(o.token_ids) == 24 and o.outputs[0].finish_reason == "length" for o in together)


def test_greedy_equals_cpu_reference(tiny):
    """The exact float32 path gives the same greedy tokens on every device (logits agree to ~1e-6)."""
    cpu = tiny if tiny.device == "cpu" else LLM(tiny.path, reference=True, ctx=128)
    assert [o.token_ids for o in tiny.generate(PROMPTS, greedy())] == [
        o.token_ids for o in cpu.generate(PROMPTS, greedy())
    ]


def test_stream_equals_generate(tiny):
    for prompt in PROMPTS:
        params = SamplingParams(temperature=0.9, seed=5, max_tokens=30, ignore_eos=True)
        deltas = list(tiny.stream(prompt, params))
        assert "".join(deltas) == tiny.generate(prompt, params)[0].text
        assert all(deltas)


def test_same_seed_same_text_different_seed_different_text(tiny):
    def run(seed: int) -> list[int]:
        return tiny.generate("the", SamplingParams(temperature=1.0, seed=seed, max_tokens=32, ignore_eos=True))[
            0
        ].token_ids

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_stop_string_never_appears(tiny):
    full = tiny.generate("the cat", greedy(40))[0].text
    stop = full[10:13]
    assert stop and stop in full
    out = tiny.generate("the cat", greedy(40, stop=[stop]))[0]
    assert stop not in out.text and out.outputs[0].finish_reason == "stop"
    assert full.startswith(out.text) and out.outputs[0].stop_reason == stop
    streamed = "".join(tiny.stream("the cat", greedy(40, stop=[stop])))
    assert streamed == out.text
    kept = tiny.generate("the cat", greedy(40, stop=[stop], include_stop_str_in_output=True))[0].text
    assert kept == out.text + stop


def test_n_samples_are_reproducible(tiny):
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    first = tiny.generate("hello", params)[0]
    assert len(first.outputs) == 4 and len({tuple(o.token_ids) for o in first.outputs}) > 1
    again = tiny.generate("hello", params)[0]
    assert [o.token_ids for o in again.outputs] == [o.token_ids for o in first.outputs]


def test_logprobs_are_reported(tiny):
    out = tiny.generate("the", greedy(8, logprobs=3))[0].outputs[0]
    assert len(out.logprobs) == 8
    for lp, token in zip(out.logprobs, out.token_ids):
        assert lp.token_id == token and lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0][0] == token  # greedy picks the most likely token


def test_context_limits(tiny):
    with pytest.raises(ContextLengthError) as e:
        tiny.generate(list(range(4, 4 + 128)), greedy())
    assert e.value.n_prompt_tokens == 128 and e.value.n_ctx == 128
    out = tiny.generate(list(range(4, 4 + 120)), greedy(100))[0]  # capped by the context
    assert len(out.token_ids) == 8 and out.outputs[0].finish_reason == "length"
    assert tiny.engine.block_manager.num_used == 0


def test_eos_ends_generation(tiny):
    # force end-of-generation with a logit bias on the EOS token
    eos = tiny.tokenizer.eos_id
    out = tiny.generate("the", SamplingParams(temperature=0, max_tokens=10, logit_bias={eos: 100}))[0]
    assert out.outputs[0].finish_reason == "stop" and out.token_ids == [eos] and out.text == ""


def hf_greedy(path: str, prompts: list[list[int]], n: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    outs = []
    for ids in prompts:
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        outs.append(gen[0, len(ids) :].tolist())
    return outs


CHATS = [
    "What is the tallest mountain in the world?",
    "Write a short poem about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three uses of Python.",
]
TEXTS = [
    "The theory of relativity says that",
    "Once upon a time, in a small village,",
    "def quicksort(arr):",
    "The best way to learn a new language is",
]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_greedy_matches_transformers(request, model):
    path = request.getfixturevalue(f"{model}_path")
    llm = LLM(path, reference=True)
    if model == "smollm2":
        prompts = [llm.chat_prompt([{"role": "user", "content": c}]) for c in CHATS]
    else:
        prompts = [llm.encode_prompt(t) for t in TEXTS]
    ours = [o.token_ids for o in llm.generate(prompts, greedy(48))]
    assert ours == hf_greedy(path, prompts, 48)
