"""`forwardpass serve --replicas 2` on a local Ray instance (issue 17, acceptance 1): streams through the `openai`
client, prefix affinity, and a replica killed under load. One lean run: Ray on a 2-core machine is heavy."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import time

import httpx
import pytest
from server_helpers import ServerProcess

pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


def replica_samples(server: ServerProcess, name: str) -> dict[int, float]:
    text = server.get("/metrics").text
    return {
        int(m.group(1)): float(m.group(2))
        for m in re.finditer(rf'^forwardpass_{name}\{{replica="(\d+)"\}} ([0-9.e+-]+)$', text, re.M)
    }


def wait_for(check, timeout_s: float, what: str, seen=lambda: None) -> None:
    """Wait until check() holds; on timeout the error names `what` and the last of `seen()` (e.g. /health)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    try:
        last = seen()
    except httpx.HTTPError as e:
        last = repr(e)
    raise TimeoutError(f"{what}; last seen: {last}")


def outcome(fn) -> str:
    """'ok', '503', or the unexpected error."""
    try:
        fn()
        return "ok"
    except openai.APIStatusError as e:
        return "503" if e.status_code == 503 else repr(e)
    except openai.APIError as e:  # an error event inside a stream
        body = e.body if isinstance(e.body, dict) else {}
        return "503" if body.get("code") == 503 or "replica" in str(e) else repr(e)


@pytest.fixture(scope="module")
def ray_server(smollm2_path):
    s = ServerProcess(smollm2_path, "--replicas", "2", "--threads", "1", "--ctx", "2048", wait=False)
    try:
        s.wait_healthy(timeout=300)
        # a loaded machine can answer 503 (no replicas in the body) for a while after the first 200: keep waiting
        wait_for(
            lambda: all(r["pid"] for r in s.get("/health").json().get("replicas") or [{"pid": 0}]), 60, "replica pids"
        )
        yield s
    finally:
        s.proc.send_signal(signal.SIGINT)  # tears the application and Ray down
        try:
            s.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001 - then kill what is left
            pass
        s.stop()


def test_replicas_stream_route_by_prefix_and_survive_a_dead_replica(ray_server, smollm2_path):
    s = ray_server
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=300)

    def chat(i: int, n: int = 16) -> str:
        stream = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=n, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with cf.ThreadPoolExecutor(16) as pool:  # 16 concurrent streams, no error
        assert all(pool.map(chat, range(16)))

    # requests sharing a 1,000-token prefix land on one replica, whose prefix cache then hits
    prefix = [1000 + (i * 7919) % 40000 for i in range(1000)]
    before = replica_samples(s, "replica_routed_total")
    for i in range(4):
        client.completions.create(model="default", prompt=prefix + [50 + i, 60 + i], max_tokens=2)
    after = replica_samples(s, "replica_routed_total")
    moved = sorted(after[r] - before[r] for r in after)
    assert moved == [0, 4]
    holder = max(after, key=lambda r: after[r] - before[r])
    wait_for(lambda: replica_samples(s, "replica_prefix_cache_hit_rate")[holder] > 0.5, 30, "hit rate")

    # kill one replica's process under load: every request completes or gets a 503, none hangs or vanishes
    victim = s.get("/health").json()["replicas"][0]["pid"]
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(outcome, lambda i=i: chat(i, 64)) for i in range(8)]
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        results = [f.result(timeout=300) for f in futures]
    assert all(r in ("ok", "503") for r in results), results

    def healthy_again() -> bool:
        replicas = s.get("/health").json()["replicas"]
        return all(r["healthy"] for r in replicas) and replicas[0]["pid"] not in (None, victim)

    wait_for(healthy_again, 240, "2 healthy replicas after the kill", lambda: s.get("/health").json())
    assert chat(1)
