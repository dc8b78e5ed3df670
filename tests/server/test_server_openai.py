"""The official `openai` client, unchanged, against the server (issue 6 acceptance 1; docs/reliability.md rows stream
equals non-stream, stop strings, logprobs, seeded sampling, concurrent greedy): chat and completions, streaming and not,
logprobs, n=2, stop strings, seeds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI

IGNORE_EOS = {"ignore_eos": True}
MESSAGES = [{"role": "user", "content": "Tell me a story about a cat"}]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)


def stream_chat(client: OpenAI, **kw) -> tuple[list, str]:
    chunks = list(client.chat.completions.create(model="default", messages=MESSAGES, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["tiny-chat"]


def test_chat_completion(client):
    r = client.chat.completions.create(
        model="tiny-chat", messages=MESSAGES, max_tokens=16, temperature=0, extra_body=IGNORE_EOS
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny-chat"
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + 16


def test_chat_stream_equals_non_stream(client):
    """Stream equals non-stream: identical text at temperature 0; role first, one id, a final chunk with finish_reason,
    usage, [DONE]."""
    whole = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=24, temperature=0, extra_body=IGNORE_EOS
    )
    chunks, text = stream_chat(
        client, max_tokens=24, temperature=0, extra_body=IGNORE_EOS, stream_options={"include_usage": True}
    )
    assert text == whole.choices[0].message.content
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert not finals[0].choices[0].delta.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed


def test_completions_stream_equals_non_stream(client):
    whole = client.completions.create(
        model="default", prompt="Once upon a time", max_tokens=20, temperature=0, extra_body=IGNORE_EOS
    )
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 20
    chunks = list(
        client.completions.create(
            model="default", prompt="Once upon a time", max_tokens=20, temperature=0, stream=True, extra_body=IGNORE_EOS
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completions_prompt_forms(client):
    """A string, a list of token ids, a batch of strings: one choice per prompt."""
    as_ids = client.completions.create(model="default", prompt=[261, 79, 79], max_tokens=4, temperature=0)
    assert as_ids.usage.prompt_tokens == 3
    batch = client.completions.create(
        model="default", prompt=["a", "b", "c"], max_tokens=4, temperature=0, extra_body=IGNORE_EOS
    )
    assert [c.index for c in batch.choices] == [0, 1, 2]
    assert batch.usage.completion_tokens == 12


def test_chat_logprobs(client):
    """Logprobs: one entry per token, bytes is a list, top_logprobs has k entries, bytes concatenate to the content."""
    r = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body=IGNORE_EOS,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 12
    for entry in content:
        assert isinstance(entry.bytes, list) and entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
    assert bytes(b for e in content for b in e.bytes).decode("utf-8", "replace") == r.choices[0].message.content
    chunks, text = stream_chat(
        client, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2, extra_body=IGNORE_EOS
    )
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert text == r.choices[0].message.content


def test_completions_logprobs(client):
    r = client.completions.create(
        model="default", prompt="The cat", max_tokens=8, temperature=0, logprobs=2, extra_body=IGNORE_EOS
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_n2_gives_two_choices(client):
    r = client.chat.completions.create(
        model="default", messages=MESSAGES, n=2, max_tokens=8, temperature=1.0, seed=3, extra_body=IGNORE_EOS
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage.completion_tokens == 16
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=MESSAGES,
            n=2,
            max_tokens=8,
            temperature=1.0,
            seed=3,
            stream=True,
            extra_body=IGNORE_EOS,
        )
    )
    for k in (0, 1):
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == k)
        assert text == r.choices[k].message.content


def test_stop_string(client):
    """Stop strings: the output ends before the stop string, streamed deltas never contain it."""
    full = (
        client.completions.create(
            model="default", prompt="Stop here", max_tokens=40, temperature=0, extra_body=IGNORE_EOS
        )
        .choices[0]
        .text
    )
    stop = full[12:15]
    expected = full[: full.index(stop)]
    r = client.completions.create(
        model="default", prompt="Stop here", max_tokens=40, temperature=0, stop=[stop], extra_body=IGNORE_EOS
    )
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    chunks = list(
        client.completions.create(
            model="default",
            prompt="Stop here",
            max_tokens=40,
            temperature=0,
            stop=stop,
            stream=True,
            extra_body=IGNORE_EOS,
        )
    )
    deltas = [c.choices[0].text for c in chunks]
    assert "".join(deltas) == expected and not any(stop in d for d in deltas)


def test_seed_makes_sampling_reproducible(client):
    """Seeded sampling: same seed at temperature 1 -> same text; another seed -> different text."""

    def run(seed: int) -> str:
        return (
            client.chat.completions.create(
                model="default", messages=MESSAGES, max_tokens=16, temperature=1.0, seed=seed, extra_body=IGNORE_EOS
            )
            .choices[0]
            .message.content
        )

    first = run(7)
    assert all(run(7) == first for _ in range(3))
    assert run(8) != first


def test_concurrent_identical_requests_agree(client):
    """Concurrent greedy: 4 identical concurrent greedy requests give identical text."""

    def run(_: int) -> str:
        return (
            client.completions.create(
                model="default", prompt="In a galaxy", max_tokens=32, temperature=0, extra_body=IGNORE_EOS
            )
            .choices[0]
            .text
        )

    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(run, range(4)))
    assert len(set(texts)) == 1


def test_completions_echo_and_batch_usage_stream(client):
    r = client.completions.create(
        model="default", prompt="Echo me", max_tokens=4, temperature=0, echo=True, extra_body=IGNORE_EOS
    )
    assert r.choices[0].text.startswith("Echo me") and len(r.choices[0].text) > len("Echo me")
    chunks = list(
        client.completions.create(
            model="default",
            prompt=["a", "b"],
            n=2,
            max_tokens=3,
            temperature=1,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=IGNORE_EOS,
        )
    )
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1, 2, 3}
    assert chunks[-1].usage.completion_tokens == 12
