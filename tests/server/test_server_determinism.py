"""docs/reliability.md, Determinism (batch-independent greedy, prefix cache is invisible) over HTTP: greedy output does
not depend on what else runs in the batch, on the prefill chunk size (--max-num-batched-tokens), or on whether the
prompt came from the prefix cache.

Outputs are compared token by token (the `bytes` of each token in the chat logprobs), not only as text: the tiny
random model emits many byte tokens that would all read as U+FFFD."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from server_helpers import ServerProcess, chat_body

pytestmark = (
    pytest.mark.slow
)  # two servers of their own; tests/test_engine.py holds batch and prefix-cache invariance in the fast set

PROMPT = "Once upon a time, in a land of quiet rivers and tall pines, there lived a curious fox who loved maps."
GREEDY = {"max_tokens": 64, "ignore_eos": True, "temperature": 0, "logprobs": True}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def chunk16(tiny_chat_model) -> Iterator[ServerProcess]:
    s = ServerProcess(tiny_chat_model, "--max-num-batched-tokens", "16", "--max-num-seqs", "4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def chunk32(tiny_chat_model) -> Iterator[ServerProcess]:
    s = ServerProcess(tiny_chat_model, "--max-num-batched-tokens", "32", "--max-num-seqs", "4")
    yield s
    s.stop()


def _tokens(r: httpx.Response) -> list[list[int]]:
    """The generated tokens of a chat response, each as its bytes."""
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["usage"]["completion_tokens"] == 64
    return [t["bytes"] for t in out["choices"][0]["logprobs"]["content"]]


def _alone(server: ServerProcess, content: str = PROMPT) -> list[list[int]]:
    return _tokens(server.post(CHAT, json=chat_body(content, **GREEDY)))


def _with_neighbours(server: ServerProcess) -> list[list[int]]:
    """The PROMPT request sent together with 3 unrelated ones (other prompts, lengths and sampling)."""
    others = [
        (
            "/v1/completions",
            {"prompt": "An unrelated question about the weather " * 3, "max_tokens": 80, "ignore_eos": True},
        ),
        ("/v1/completions", {"prompt": "zz" * 70, "max_tokens": 40, "temperature": 1.2, "seed": 7, "ignore_eos": True}),
        (CHAT, chat_body("something else entirely", max_tokens=64, ignore_eos=True, temperature=0)),
    ]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(
                c.post(CHAT, json=chat_body(PROMPT, **GREEDY)), *(c.post(path, json=b) for path, b in others)
            )

    results = asyncio.run(run())
    assert [r.status_code for r in results] == [200] * 4
    return _tokens(results[0])


def test_batch_and_chunk_size_do_not_change_greedy_output(server, chunk16, chunk32):
    """Batch-independent greedy: temperature 0, alone vs. with 3 concurrent unrelated requests, with prefill chunks of
    16, 32 and 512 tokens -> the same 64 tokens."""
    n_prompt = len(server.post("/tokenize", json={"messages": [{"role": "user", "content": PROMPT}]}).json()["tokens"])
    assert n_prompt > 3 * 32  # several chunks at both sizes
    reference = _alone(chunk16)
    assert len(set(map(bytes, reference))) > 10  # a varied output, not one token repeated
    assert _with_neighbours(chunk16) == reference
    assert _alone(chunk32) == reference
    assert _with_neighbours(chunk32) == reference
    assert _alone(server) == reference  # chunk 512: the whole prompt in one step
    for s in (chunk16, chunk32):
        s.wait_idle()


def test_prefix_cache_hit_gives_the_same_text(server):
    """Prefix cache is invisible: the same prompt computed from scratch (miss) and mostly read from the prefix cache
    (hit) -> identical tokens; usage.prompt_tokens_details.cached_tokens tells which was which."""
    body = chat_body(f"[{uuid.uuid4().hex}] {PROMPT}", **GREEDY)  # never seen before: the first request misses
    miss = server.post(CHAT, json=body)
    hit = server.post(CHAT, json=body)
    assert miss.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    n_prompt = hit.json()["usage"]["prompt_tokens"]
    assert hit.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= n_prompt - 16
    assert _tokens(hit) == _tokens(miss)
    assert hit.json()["choices"][0]["message"]["content"] == miss.json()["choices"][0]["message"]["content"]

    # completions, streamed: a hit again, the same text, and the usage chunk reports it
    prompt = f"[{uuid.uuid4().hex}] {PROMPT}"
    plain = {"prompt": prompt, "max_tokens": 64, "ignore_eos": True, "temperature": 0}
    miss = server.post("/v1/completions", json=plain).json()
    r = server.post("/v1/completions", json=plain | {"stream": True, "stream_options": {"include_usage": True}})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert miss["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == miss["choices"][0]["text"]
