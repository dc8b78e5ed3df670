"""docs/reliability.md rows backpressure, stall detector, engine death, loading, leaving while queued, corrupt GGUF (the
server side) and metrics."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from server_helpers import RawConnection, assert_error, chat_body, wait_until

LONG = {"max_tokens": 200, "ignore_eos": True, "temperature": 0}


def test_metrics_exposes_the_documented_names(server):
    server.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
    r = server.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in (
        "forwardpass_requests_running",
        "forwardpass_requests_waiting",
        "forwardpass_kv_blocks_used",
        "forwardpass_kv_blocks_total",
        "forwardpass_prefix_cache_hit_rate",
        "forwardpass_engine_last_step_age_seconds",
        "forwardpass_time_to_first_token_seconds_bucket",
        "forwardpass_inter_token_latency_seconds_bucket",
        "forwardpass_e2e_request_latency_seconds_bucket",
        "forwardpass_prompt_tokens_total",
        "forwardpass_generation_tokens_total",
        "process_resident_memory_bytes",
    ):
        assert f"\n{name}" in r.text, name
    m = server.metrics()
    assert m["forwardpass_generation_tokens_total"] >= 1 and m["forwardpass_kv_blocks_total"] > 0


def test_tokenize_and_detokenize(server):
    ids = server.post("/tokenize", json={"content": "the cat"}).json()
    assert ids["tokens"] and ids["count"] == len(ids["tokens"]) and ids["max_model_len"] == 256
    assert server.post("/detokenize", json={"tokens": ids["tokens"]}).json()["content"] == "the cat"
    chat = server.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > ids["count"]
    pieces = server.post("/tokenize", json={"content": "ab", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "ab"
    assert_error(server.post("/tokenize", json={"content": 5}), 400)
    assert_error(server.post("/detokenize", json={"tokens": [10**9]}), 400, param="tokens")


@pytest.fixture(scope="module")
def small_server(tiny_chat_model):
    from server_helpers import ServerProcess

    s = ServerProcess(tiny_chat_model, "--max-num-seqs", "2", "--max-queue", "4")
    yield s
    s.stop()


def test_queue_full_is_503_at_once(small_server):
    """Backpressure: 2 slots + queue 4, 20 simultaneous requests -> the excess gets 503 with Retry-After at once (every
    503 arrives before any admitted request has finished: none waited for a slot), the rest 200, no resets or timeouts.
    /health keeps answering meanwhile. Raw keep-alive connections."""
    body = {"prompt": "queue", "max_tokens": 40, "ignore_eos": True}
    order: list[int] = []  # statuses in the order the responses arrived

    async def one(conn: RawConnection) -> tuple[int, dict, bytes]:
        status, headers, payload = await conn.post_json("/v1/completions", body)
        order.append(status)
        return status, headers, payload

    async def run() -> tuple[list, int]:
        conns = [await RawConnection.open(small_server.port) for _ in range(20)]
        async with httpx.AsyncClient(base_url=small_server.url, timeout=60) as c:
            tasks = [asyncio.ensure_future(one(conn)) for conn in conns]
            health_while_busy = 0
            while not all(t.done() for t in tasks):
                assert (await c.get("/health")).status_code == 200
                health_while_busy += not all(t.done() for t in tasks)
        for conn in conns:
            conn.close()
        return [t.result() for t in tasks], health_while_busy

    results, health_while_busy = asyncio.run(run())
    statuses = [s for s, _, _ in results]
    assert set(statuses) == {200, 503} and statuses.count(200) >= 6, statuses
    for status, headers, payload in results:
        if status == 503:
            err = json.loads(payload)["error"]
            assert err["type"] == "unavailable_error" and err["code"] == "queue_full"
            assert headers["retry-after"] == "1"
    assert 200 not in order[: order.count(503)], order  # refused before any generation finished
    assert health_while_busy >= 1
    small_server.wait_idle()


def test_disconnect_while_queued_never_prefills(small_server):
    """Leaving while queued: a request that leaves while waiting never reaches prefill (prompt_tokens_total
    unchanged)."""

    async def run() -> None:
        async with httpx.AsyncClient(base_url=small_server.url, timeout=60) as c:
            blockers = [
                asyncio.ensure_future(c.post("/v1/completions", json={"prompt": "block", **LONG})) for _ in range(2)
            ]
            while small_server.metrics()["forwardpass_requests_running"] < 2:
                await asyncio.sleep(0.01)
            before = small_server.metrics()["forwardpass_prompt_tokens_total"]
            with pytest.raises(httpx.ReadTimeout):
                await c.post(
                    "/v1/completions",
                    json={"prompt": "queued " * 5, "max_tokens": 100},
                    timeout=httpx.Timeout(0.2, connect=10),
                )  # a slow connect on a busy machine is no leave
            for b in blockers:
                b.cancel()
            await asyncio.gather(*blockers, return_exceptions=True)
            await asyncio.sleep(0.05)
            assert small_server.metrics()["forwardpass_prompt_tokens_total"] == before

    asyncio.run(run())
    m = small_server.wait_idle()
    assert m["forwardpass_server_requests_active"] == 0


@pytest.mark.slow
def test_health_while_loading(make_server):
    """Loading: while the model loads, /health is llama.cpp's exact 503 and completions are 503 too."""
    s = make_server(env={"FORWARDPASS_TEST_FAULT": "slow_load:3"}, wait=False)
    s.wait_listening()
    r = s.get("/health")
    assert r.status_code == 503
    assert r.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    assert_error(s.post("/v1/chat/completions", json=chat_body()), 503, "unavailable_error")
    assert s.post("/v1/completions", json={"prompt": "x"}).status_code == 503
    s.wait_healthy()
    assert s.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


@pytest.mark.slow
def test_stalled_engine_turns_health_503(make_server):
    """Stall detector: a wedged engine loop with work pending -> /health 503 once no step finished for stall_timeout."""
    s = make_server("--stall-timeout", "1", env={"FORWARDPASS_TEST_FAULT": "stall_after_steps:3"})
    with pytest.raises(httpx.ReadTimeout):
        s.post("/v1/completions", json={"prompt": "x", **LONG}, timeout=0.3)
    wait_until(lambda: s.get("/health").status_code != 200, "/health never turned 503", timeout=60, poll=0.05)
    assert s.get("/health").json()["error"]["message"] == "Engine stalled"


def test_engine_death_fails_requests_and_exits(make_server):
    """Engine death: an exception in the engine thread -> in-flight requests get 500 / an SSE error event, /health 503,
    and the process exits non-zero."""
    s = make_server(env={"FORWARDPASS_TEST_FAULT": "crash_after_steps:20"})

    async def run() -> tuple[httpx.Response, list[dict]]:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:

            async def stream() -> list[dict]:
                events = []
                async with c.stream("POST", "/v1/completions", json={"prompt": "s", "stream": True, **LONG}) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            events.append(json.loads(line[6:]))
                return events

            return await asyncio.gather(c.post("/v1/completions", json={"prompt": "p", **LONG}), stream())

    plain, events = asyncio.run(run())
    assert_error(plain, 500, "server_error")
    assert "error" in events[-1] and events[-1]["error"]["type"] == "server_error"
    try:
        assert s.get("/health").status_code == 503
    except httpx.ConnectError:
        pass  # already gone
    assert s.proc.wait(timeout=60) != 0
    assert "engine thread died" in s.logs()


@pytest.mark.slow
def test_bad_model_file_refuses_to_start(make_server, tmp_path):
    """Corrupt GGUF (the server side): a corrupt GGUF -> the server exits non-zero with one clear log line, no
    traceback."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    s = make_server(model=str(bad), wait=False)
    assert s.proc.wait(timeout=30) != 0
    logs = s.logs()
    assert len([line for line in logs.splitlines() if "cannot load model" in line]) == 1, logs
    assert "Traceback" not in logs
