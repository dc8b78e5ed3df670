"""docs/reliability.md rows slots (the slots/requests matrix and GET /slots) and queue timeout.

Engine steps are slowed a little (test fault ``slow_steps``) so that requests on the tiny model run long enough to
be watched; nothing is timed against the slowdown except where the spec names a bound."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from server_helpers import API_KEY, ServerProcess, assert_error, chat_body

SLOW = {"FORWARDPASS_TEST_FAULT": "slow_steps:0.01"}
MATRIX = {1: [3], 2: [2, 4], 4: [2, 6]}  # slots -> request counts: (1,3), (2,2), (2,4), (4,2), (4,6)


@pytest.fixture(scope="module")
def one_slot(tiny_chat_model) -> Iterator[ServerProcess]:
    """One slot, and waiting requests give up after 1 s."""
    s = ServerProcess(tiny_chat_model, "--max-num-seqs", "1", "--max-queue", "8", "--queue-timeout", "1", env=SLOW)
    yield s
    s.stop()


def _busy(server) -> list[dict]:
    r = server.get("/slots", headers=server.auth_headers)
    assert r.status_code == 200, r.text
    return [s for s in r.json() if s["is_processing"]]


@pytest.mark.slow
@pytest.mark.parametrize("slots", sorted(MATRIX))
def test_slots_matrix(make_server, slots):
    """Slots: every request is 200; while they run /slots lists `slots` slots and min(slots, requests) busy, and never
    more."""
    server = make_server("--max-num-seqs", str(slots), "--max-queue", "16", env=SLOW)
    table = server.get("/slots").json()
    assert [s["id"] for s in table] == list(range(slots)) and not any(s["is_processing"] for s in table)
    assert all(s["n_ctx"] == 256 and s["id_task"] is None for s in table)

    async def run(requests: int) -> tuple[list[httpx.Response], list[int]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            body = {"prompt": "slot", "max_tokens": 20, "ignore_eos": True, "temperature": 0}
            tasks = [asyncio.ensure_future(c.post("/v1/completions", json=body)) for _ in range(requests)]
            seen = []
            while not all(t.done() for t in tasks):
                table = (await c.get("/slots")).json()
                assert len(table) == slots
                seen.append(sum(s["is_processing"] for s in table))
                await asyncio.sleep(0.01)
            return [t.result() for t in tasks], seen

    for requests in MATRIX[slots]:
        responses, seen = asyncio.run(run(requests))
        assert [r.status_code for r in responses] == [200] * requests
        assert all(r.json()["usage"]["completion_tokens"] == 20 for r in responses)
        assert max(seen) == min(slots, requests), seen
        server.wait_idle()
        assert _busy(server) == []


def test_slots_show_progress_and_are_stable(one_slot):
    """Slots: a busy slot names its request (the response id) and its progress; it keeps its number while it runs;
    `?fail_on_no_slot=1` is 503 when all slots are busy."""
    server = one_slot
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = chat_body(stream=True, max_tokens=60, ignore_eos=True)
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()  # kept: a dropped iterator would close the stream
            rid = json.loads(next(lines)[6:])["id"]
            deadline = time.monotonic() + 10
            while not (busy := _busy(server)) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert busy and busy[0]["id"] == 0 and busy[0]["id_task"] == f"{rid}-0", busy
            assert busy[0]["n_prompt_tokens"] > 0 and busy[0]["n_prompt_tokens_processed"] <= busy[0]["n_prompt_tokens"]
            assert_error(server.get("/slots?fail_on_no_slot=1"), 503, "unavailable_error", code="no_slot_available")
            later = _busy(server)
            assert later and later[0]["id"] == 0 and later[0]["id_task"] == f"{rid}-0"
            assert later[0]["n_decoded"] >= busy[0]["n_decoded"]
            for _ in lines:
                pass
    server.wait_idle()
    assert server.get("/slots?fail_on_no_slot=1").status_code == 200


def test_slots_needs_the_key(auth_server):
    """/slots is protected like every route but /health."""
    assert_error(auth_server.get("/slots"), 401, "authentication_error")
    r = auth_server.get("/slots", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and isinstance(r.json(), list)


def test_queue_timeout(one_slot):
    """Queue timeout: with the only slot held by a long request, waiting requests (plain and streamed) get 503
    queue_timeout with Retry-After when --queue-timeout runs out, and leave the engine's queue; the long request,
    running for longer than the timeout, is not touched, and the server keeps serving."""
    server = one_slot
    server.wait_idle()
    timeouts_before = server.metrics()["forwardpass_queue_timeouts_total"]
    long = {"prompt": "hold the slot", "max_tokens": 200, "ignore_eos": True, "temperature": 0}
    short = {"prompt": "waiting", "max_tokens": 5}

    async def run() -> tuple[httpx.Response, list[httpx.Response], float, dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            blocker = asyncio.ensure_future(c.post("/v1/completions", json=long))
            while not _busy(server):
                await asyncio.sleep(0.01)

            bodies = (short, short | {"stream": True}, short | {"n": 2, "temperature": 1})
            tasks = [asyncio.ensure_future(c.post("/v1/completions", json=body)) for body in bodies]
            queued = 0.0  # the most requests seen waiting before any of the three was answered
            while queued < len(bodies) and not any(t.done() for t in tasks):
                queued = max(queued, server.metrics()["forwardpass_requests_waiting"])
                await asyncio.sleep(0.01)
            waiting = await asyncio.gather(*tasks)
            deadline = time.monotonic() + 2  # the engine drops them at its next step
            while (after := server.metrics())["forwardpass_requests_waiting"] and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not blocker.done()
            return await blocker, waiting, queued, after

    blocker, waiting, queued, after = asyncio.run(run())
    assert queued >= 3, queued  # they waited in the queue first: not refused at once
    for r in waiting:
        err = assert_error(r, 503, "unavailable_error", code="queue_timeout")
        assert "queue timeout" in err["message"] and r.headers["retry-after"] == "1"
    assert after["forwardpass_requests_waiting"] == 0 and after["forwardpass_requests_running"] == 1
    assert after["forwardpass_queue_timeouts_total"] - timeouts_before == 3
    assert blocker.status_code == 200 and blocker.json()["usage"]["completion_tokens"] == 200
    m = server.wait_idle()
    assert m["forwardpass_server_requests_active"] == 0 and m["forwardpass_kv_blocks_used"] == 0
    assert server.post("/v1/completions", json=short).status_code == 200
    r = server.post("/v1/completions", json=short | {"stream": True})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


def test_queue_timeout_of_an_embedding_request(one_slot):
    """An embedding request behind the only slot's long generation gets 503 queue_timeout too, counted once, and
    the generation is not touched."""
    server = one_slot
    server.wait_idle()
    timeouts_before = server.metrics()["forwardpass_queue_timeouts_total"]
    long = {"prompt": "hold the slot", "max_tokens": 200, "ignore_eos": True, "temperature": 0}

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            blocker = asyncio.ensure_future(c.post("/v1/completions", json=long))
            while not _busy(server):
                await asyncio.sleep(0.01)
            waiting = await c.post("/v1/embeddings", json={"input": ["waiting", "also waiting"]})
            assert not blocker.done()
            return await blocker, waiting

    blocker, waiting = asyncio.run(run())
    err = assert_error(waiting, 503, "unavailable_error", code="queue_timeout")
    assert "queue timeout" in err["message"] and waiting.headers["retry-after"] == "1"
    assert server.metrics()["forwardpass_queue_timeouts_total"] - timeouts_before == 1
    assert blocker.status_code == 200 and blocker.json()["usage"]["completion_tokens"] == 200
    server.assert_idle()
