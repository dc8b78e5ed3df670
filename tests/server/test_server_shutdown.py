"""docs/reliability.md, Shutdown (graceful drain, zero-timeout shutdown, second signal): SIGTERM drains in-flight
requests, refuses new ones, and exits 0; a zero timeout aborts; a second signal exits at once."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import psutil
import pytest
from server_helpers import assert_error, wait_until


def _start_requests(s, n: int, max_tokens: int) -> tuple[list[threading.Thread], list]:
    results: list = [None] * n

    def one(i: int) -> None:
        try:
            results[i] = httpx.post(
                s.url + "/v1/completions",
                timeout=60,
                json={"prompt": f"drain {i}", "max_tokens": max_tokens, "ignore_eos": True},
            )
        except httpx.HTTPError as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: s.metrics()["forwardpass_server_requests_active"] >= n, "the requests never became active")
    return threads, results


def test_sigterm_drains_in_flight_requests(make_server):
    """Graceful drain: in-flight requests complete, new ones get 503, /health is 503 right away, exit code 0, no
    children."""
    s = make_server("--shutdown-timeout", "30")
    threads, results = _start_requests(s, 10, 120)
    assert psutil.Process(s.proc.pid).children(recursive=True) == []
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    health = s.get("/health")
    assert health.status_code == 503 and health.json()["error"]["message"] == "Shutting down"
    assert_error(s.post("/v1/completions", json={"prompt": "late"}), 503, "unavailable_error")
    for t in threads:
        t.join(30)
    for r in results:
        assert isinstance(r, httpx.Response) and r.status_code == 200, r
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 120
    assert s.proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_zero_shutdown_timeout_aborts(make_server):
    """Zero-timeout shutdown: --shutdown-timeout 0 -> in-flight requests end with finish_reason "abort" (or a closed
    connection) and the process exits without waiting for them."""
    # steps slowed (test fault) so that 230 tokens take over a second: the requests are surely in flight
    s = make_server("--shutdown-timeout", "0", env={"FORWARDPASS_TEST_FAULT": "slow_steps:0.005"})
    threads, results = _start_requests(s, 4, 230)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=60) == 0  # a deadline to fail on: the requests themselves would take far longer
    for t in threads:
        t.join(5)
    for r in results:
        if isinstance(r, httpx.Response):
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "abort"
        else:
            assert isinstance(r, httpx.HTTPError)


@pytest.mark.slow
def test_second_signal_exits_at_once(make_server):
    """Second signal: a second SIGINT during the drain exits immediately."""
    s = make_server("--shutdown-timeout", "30")
    threads, _ = _start_requests(s, 2, 230)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(timeout=20) != 0  # well before the 30 s drain would end
    for t in threads:
        t.join(5)
