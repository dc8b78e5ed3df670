"""docs/reliability.md, leaving during prefill (a disconnect during a long chunked prefill stops it at the next chunk)
and abort storm (an abort storm of 200 requests, half of them leaving at random moments and 2 of those mid-prefill: the
survivors get exactly their solo text and the server ends idle with nothing leaked).

The tiny model is rewritten with a 2,048-token context so that a 1,500-token prompt fits; prefill runs in chunks
of 32 tokens (--max-num-batched-tokens), and each engine step is slowed by 5 ms (test fault ``slow_steps``) so
that a prefill lasts long enough to be caught in the middle on a loaded machine. /slots shows how far a prompt's
prefill has got; the ``engine_steps_total`` counter shows how many chunks ran after the disconnect."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Iterator
from unittest import mock

import gguf
import httpx
import pytest
from server_helpers import CHATML, ServerProcess, chat_body, stream_completion_text, wait_until
from tiny_models import write_tiny_model

pytestmark = (
    pytest.mark.slow
)  # a 2k-context server and a 200-request storm; tests/server/test_server_cancel.py keeps disconnects in the fast set

LONG_CTX = 2048
CHUNK = 32


@pytest.fixture(scope="module")
def long_server(tmp_path_factory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("long") / "tiny-chat-2k.gguf"
    add_context_length = gguf.GGUFWriter.add_context_length
    with mock.patch.object(gguf.GGUFWriter, "add_context_length", lambda w, n: add_context_length(w, LONG_CTX)):
        write_tiny_model(path, "llama", chat_template=CHATML)
    s = ServerProcess(
        str(path),
        "--ctx",
        str(LONG_CTX),
        "--max-num-batched-tokens",
        str(CHUNK),
        "--max-num-seqs",
        "16",
        "--max-queue",
        "256",
        # 20 ms a step: a ~1,200-token prefill (38 chunks) lasts ~0.8 s, longer than a /slots round trip on a
        # loaded 2-core machine (with 5 ms, a full CI run once saw the whole prefill finish before its first poll)
        env={"FORWARDPASS_TEST_FAULT": "slow_steps:0.02"},
    )
    yield s
    s.stop()


def _assert_idle(server: ServerProcess) -> dict[str, float]:
    m = server.assert_idle(timeout=10)
    assert m["forwardpass_server_requests_active"] == 0, m
    assert not any(slot["is_processing"] for slot in server.get("/slots").json())
    return m


def _mid_prefill(slots: list[dict], task: str | None = None) -> dict | None:
    """The busy slot (of `task`, if given) whose prompt is partly computed."""
    for slot in slots:
        if (
            slot["is_processing"]
            and (task is None or slot["id_task"] == task)
            and 0 < slot["n_prompt_tokens_processed"] < slot["n_prompt_tokens"]
        ):
            return slot
    return None


def _post_raw(port: int, path: str, body: dict) -> socket.socket:
    """Send a request on a socket of our own, so that the test decides the exact moment the client leaves."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_disconnect_during_long_prefill_stops_it(long_server, stream):
    """Leaving during prefill: leave during the prefill of a 1,500-token prompt -> at most a chunk or two more runs (not
    the ~40 left), the prompt never completes, and every block is freed."""
    s = long_server
    _assert_idle(s)
    prompt = [random.Random(i).randrange(4, 380) for i in range(1500)]
    sock = _post_raw(s.port, "/v1/completions", {"prompt": prompt, "max_tokens": 16, "stream": stream})
    try:
        slot = wait_until(
            lambda: (m := _mid_prefill(s.get("/slots").json())) and m["n_prompt_tokens_processed"] >= 2 * CHUNK and m,
            "the prefill was never seen in progress",
            poll=0.002,
        )
        before = s.metrics()
    finally:
        sock.close()
    assert slot["n_prompt_tokens"] == 1500
    chunks_left = (1500 - slot["n_prompt_tokens_processed"]) // CHUNK
    assert chunks_left >= 20, slot  # caught early enough for the check below to mean something
    after = _assert_idle(s)
    ran = after["forwardpass_engine_steps_total"] - before["forwardpass_engine_steps_total"]
    assert ran <= 5, (ran, chunks_left)  # the chunk in flight, maybe one more; not the rest of the prompt
    assert after["forwardpass_prompt_tokens_total"] == before["forwardpass_prompt_tokens_total"]  # never finished
    assert after["forwardpass_generation_tokens_total"] == before["forwardpass_generation_tokens_total"]


SURVIVOR_PROMPTS = [f"survivor {i} asks about item {i * 7}" for i in range(10)]
SURVIVOR = {"max_tokens": 16, "ignore_eos": True, "temperature": 0}


async def _survivor(c: httpx.AsyncClient, prompt: str, stream: bool) -> str:
    body = {"prompt": prompt, **SURVIVOR}
    if not stream:
        r = await c.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]
    return await stream_completion_text(c, body)


async def _leaver(c: httpx.AsyncClient, rng: random.Random, i: int) -> bool:
    """A request that leaves after a random time; True if it left before its answer was complete."""
    chat = rng.random() < 0.5
    body = {"max_tokens": 200, "ignore_eos": True, "temperature": rng.choice([0, 0.8]), "stream": rng.random() < 0.5}
    body |= chat_body(f"leaver {i} " * rng.randint(1, 30)) if chat else {"prompt": f"leaver {i} " * rng.randint(1, 30)}
    path = "/v1/chat/completions" if chat else "/v1/completions"

    async def run() -> None:
        if not body["stream"]:
            await c.post(path, json=body)
            return
        async with c.stream("POST", path, json=body) as r:
            async for _ in r.aiter_lines():
                pass

    try:
        await asyncio.wait_for(run(), timeout=rng.uniform(0.01, 0.9))
    except asyncio.TimeoutError:
        return True
    return False


async def _prefill_leaver(c: httpx.AsyncClient, ready: asyncio.Event, seq: int) -> dict:
    """A streamed chat request with a ~1,200-token prompt that leaves once /slots shows its prefill under way."""
    body = chat_body(f"long prompt number {seq}: " + "abcdefgh " * 130, max_tokens=16, stream=True)
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.aiter_lines()
        rid = json.loads((await anext(lines))[6:])["id"]  # the role chunk, sent before any engine work
        ready.set()  # submitted: the engine queues it ahead of everything sent after this
        deadline = time.monotonic() + 30
        while (slot := _mid_prefill((await c.get("/slots")).json(), f"{rid}-0")) is None:
            assert time.monotonic() < deadline, "this prefill was never seen in progress"
            await asyncio.sleep(0.002)
    return slot  # leaving the `async with` closed the connection mid-prefill


def test_abort_storm(long_server):
    """Abort storm: 200 requests; 98 leave at random moments and 2 more in the middle of a long prefill -> the 100
    survivors get exactly their solo text (temperature 0), and at idle kv_blocks_used, running and waiting are all 0."""
    s = long_server
    _assert_idle(s)

    async def run() -> tuple[dict[str, str], list[tuple[str, str]], list[bool], list[dict]]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=s.url, timeout=120, limits=limits) as c:
            solo = {p: await _survivor(c, p, stream=False) for p in SURVIVOR_PROMPTS}
            first, second = asyncio.Event(), asyncio.Event()
            prefill_leavers = [asyncio.ensure_future(_prefill_leaver(c, first, 0))]
            await first.wait()
            prefill_leavers.append(asyncio.ensure_future(_prefill_leaver(c, second, 1)))
            await second.wait()
            rng = random.Random(5)
            work: list = [("survivor", i) for i in range(100)] + [("leaver", i) for i in range(98)]
            rng.shuffle(work)
            coros = [
                _survivor(c, SURVIVOR_PROMPTS[i % 10], stream=i % 2 == 1) if kind == "survivor" else _leaver(c, rng, i)
                for kind, i in work
            ]
            results = await asyncio.gather(*coros, *prefill_leavers)
            survivors = [
                (SURVIVOR_PROMPTS[i % 10], text) for (kind, i), text in zip(work, results) if kind == "survivor"
            ]
            left = [r for (kind, _), r in zip(work, results) if kind == "leaver"]
            return solo, survivors, left, list(results[len(work) :])

    solo, survivors, left, mid_prefill = asyncio.run(run())
    assert len(survivors) == 100 and len(left) + len(mid_prefill) == 100
    assert all(left), "every leaver left before its answer was complete"
    assert [text for _, text in survivors] == [solo[p] for p, _ in survivors]
    assert len(mid_prefill) == 2 and all(
        0 < slot["n_prompt_tokens_processed"] < slot["n_prompt_tokens"] for slot in mid_prefill
    ), mid_prefill
    _assert_idle(s)
