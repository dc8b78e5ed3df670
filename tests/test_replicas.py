"""Engine replicas without Ray: the prefix router, and the server app over two in-process replicas (a fake
deployment) whose clients can die mid-request. The real Ray Serve run is in tests/server/test_server_ray.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tiny_models import write_tiny_model

from forwardpass.config import EngineConfig
from forwardpass.ray.front import FrontLLM
from forwardpass.ray.replicas import EngineReplica, ReplicaSet
from forwardpass.ray.router import NoReplicaError, PrefixRouter, prefix_hashes
from forwardpass.server.app import create_app
from forwardpass.server.config import ServerConfig
from forwardpass.server.state import ServerState

SHARED = [4 + (j * 11) % 300 for j in range(64)]  # four 16-token blocks


def prompt(i: int, n: int = 40) -> list[int]:
    return [4 + (i * 37 + j * 13) % 300 for j in range(n)]


# ---- the router ----


def test_prefix_hashes_name_whole_blocks_as_a_chain():
    a, b = prefix_hashes(SHARED + [1, 2], 16, 8), prefix_hashes(SHARED[:32] + [9] * 40, 16, 8)
    assert len(a) == 4 and len(b) == 4  # only full blocks count
    assert a[:2] == b[:2] and a[2] != b[2]  # shared while the tokens are; every later block differs
    assert len(prefix_hashes(SHARED, 16, 2)) == 2


def test_router_sends_a_shared_prefix_to_the_replica_that_has_it():
    router = PrefixRouter(3, block_size=16)
    first = router.choose(SHARED + [1])
    router.started(first, SHARED + [1])
    for i in range(4):  # the others are less loaded, but hold nothing of this prefix
        p = SHARED + prompt(i, 8)
        assert router.choose(p) == first
        router.started(first, p, by_prefix=True)
    assert router.load[first] == 5 and router.prefix_routed[first] == 4
    router.load[first] = 20  # far more loaded than the others: the prefix no longer wins
    assert router.choose(SHARED + [2]) != first


def test_router_spreads_unrelated_prompts_by_load():
    router = PrefixRouter(2, block_size=16)
    chosen = []
    for i in range(6):
        r = router.choose(prompt(i))
        router.started(r, prompt(i))
        chosen.append(r)
    assert chosen.count(0) == chosen.count(1) == 3
    router.finished(0)
    router.finished(0)
    assert router.choose(prompt(99)) == 0  # the least loaded


def test_router_skips_and_forgets_a_dead_replica():
    router = PrefixRouter(2, block_size=16)
    router.started(0, SHARED)
    router.mark_down(0)
    assert router.choose(SHARED) == 1
    router.mark_up(0)
    router.started(1, SHARED)
    assert router.choose(SHARED) == 1  # replica 0's cache is gone: the prefix now lives on 1
    router.mark_down(0)
    router.mark_down(1)
    with pytest.raises(NoReplicaError):
        router.choose(SHARED)


# ---- the server over a fake deployment: two replicas in this process ----


class LocalClient:
    """An `EngineReplica` reached in process; `die_after` outputs into a request it fails as a dead process
    would, and stays dead (stats fail too) until `revive`."""

    def __init__(self, replica: EngineReplica) -> None:
        self.replica, self.dead, self.die_after = replica, False, None
        self.served: list[str] = []

    async def generate(self, request_id: str, prompt_ids: list[int], params: Any) -> AsyncIterator[Any]:
        self.served.append(request_id)
        sent = 0
        async for out in self.replica.generate(request_id, prompt_ids, params):
            if self.die_after is not None and sent >= self.die_after:
                self.dead = True
            if self.dead:
                raise ConnectionError("the replica's process died")
            sent += 1
            yield out

    async def embed(self, request_id: str, prompt_ids: list[int], pooling: str) -> AsyncIterator[Any]:
        async for out in self.replica.embed(request_id, prompt_ids, pooling):
            yield out

    async def stats(self) -> Any:
        if self.dead:
            raise ConnectionError("the replica's process died")
        return self.replica.stats()

    def revive(self) -> None:
        self.dead, self.die_after = False, None


class RestartingClient(LocalClient):
    """A `LocalClient` that reports a process id, so a test can swap its process as Ray restarts a replica."""

    process = 1000

    async def pid(self) -> int:
        if self.dead:
            raise ConnectionError("the replica's process died")
        return self.process


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("replicas") / "llama.gguf", "llama", tile_types=True))


@pytest.fixture(scope="module")
def deployment(tiny_path):
    engine = EngineConfig(model=tiny_path, ctx=256, threads=1, max_num_seqs=8)
    replicas = [EngineReplica(engine) for _ in range(2)]
    yield engine, replicas
    for r in replicas:
        r.close()


def make_app(deployment, api_key: str | None = None, client=LocalClient):
    engine, replicas = deployment
    clients = [client(r) for r in replicas]
    front = FrontLLM(engine, len(clients))
    replica_set = ReplicaSet(clients, front.engine.validate, front.engine.validate_embed, 16)
    config = ServerConfig(engine=engine, api_keys=(api_key,) if api_key else ())
    state = ServerState(config, replicas=len(clients))
    state.attach(front, replica_set)
    return create_app(config, state), clients, replica_set


async def complete(client: httpx.AsyncClient, ids: list[int], stream: bool = False, n: int = 6) -> httpx.Response:
    body = {"model": "default", "prompt": ids, "max_tokens": n, "temperature": 0, "stream": stream}
    return await client.post("/v1/completions", json=body)


def run(coro_fn, app) -> Any:
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
            return await coro_fn(client)

    return asyncio.run(main())


async def until(check, client: httpx.AsyncClient, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check(client):
            return True
        await asyncio.sleep(0.1)
    return False


def test_fake_deployment_routes_by_prefix_streams_and_reports_every_replica(deployment):
    app, clients, replica_set = make_app(deployment, api_key="k")

    async def scenario(client: httpx.AsyncClient) -> None:
        client.headers["Authorization"] = "Bearer k"
        assert (
            await client.post("/v1/completions", json={"prompt": [5]}, headers={"Authorization": ""})
        ).status_code == 401
        shared = [complete(client, SHARED + prompt(i, 5)) for i in range(4)]
        others = [complete(client, prompt(10 + i)) for i in range(4)]
        first = await complete(client, SHARED + [7])  # puts the prefix on one replica
        results = await asyncio.gather(*shared, *others)
        assert first.status_code == 200 and all(r.status_code == 200 for r in results)
        holder = [i for i, c in enumerate(clients) if any(f"{first.json()['id']}" in rid for rid in c.served)]
        assert len(holder) == 1
        shared_ids = {r.json()["id"] for r in results[:4]}
        assert all(any(s in rid for rid in clients[holder[0]].served) for s in shared_ids)
        assert all(len(c.served) >= 2 for c in clients)  # the unrelated prompts spread over both
        streamed = await complete(client, prompt(3), stream=True)
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        embedded = await client.post("/v1/embeddings", json={"model": "default", "input": [prompt(4), prompt(5)]})
        assert embedded.status_code == 200 and [len(d["embedding"]) for d in embedded.json()["data"]] == [256, 256]

        async def hit_rate_shown(c: httpx.AsyncClient) -> bool:
            text = (await c.get("/metrics")).text
            line = f'forwardpass_replica_prefix_cache_hit_rate{{replica="{holder[0]}"}}'
            return any(ln.startswith(line) and float(ln.split()[-1]) > 0 for ln in text.splitlines())

        assert await until(hit_rate_shown, client)
        health = (await client.get("/health")).json()
        assert health["status"] == "ok" and [r["healthy"] for r in health["replicas"]] == [True, True]

    run(scenario, app)
    assert replica_set.router.load == [0, 0]


def test_fake_deployment_dead_replica_ends_its_requests_with_503(deployment):
    app, clients, replica_set = make_app(deployment)

    async def scenario(client: httpx.AsyncClient) -> None:
        clients[0].die_after = 1  # the next request on replica 0 fails after its first output
        lost = await complete(client, prompt(1), n=12)
        assert lost.status_code == 503 and lost.json()["error"]["code"] == "replica_lost"
        assert lost.headers["Retry-After"] == "1"
        served = await asyncio.gather(*(complete(client, prompt(20 + i)) for i in range(3)))
        assert all(r.status_code == 200 for r in served)  # all on replica 1 now
        assert len(clients[0].served) == 1 and len(clients[1].served) == 3
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded" and [r["healthy"] for r in health["replicas"]] == [False, True]
        clients[0].revive()

        async def healthy(c: httpx.AsyncClient) -> bool:
            return (await c.get("/health")).json()["status"] == "ok"

        assert await until(healthy, client)
        clients[1].die_after = 0  # a stream that fails: its error event is a 503
        clients[0].die_after = 0
        streamed = await complete(client, prompt(30), stream=True, n=12)
        events = [json.loads(x[6:]) for x in streamed.text.split("\n\n") if x.startswith("data: {")]
        assert events and events[-1]["error"]["code"] == 503
        for c in clients:
            c.revive()
        assert await until(healthy, client)

    run(scenario, app)
    assert replica_set.router.load == [0, 0]


def test_a_replica_replaced_between_polls_forgets_its_prefixes_and_shows_its_new_process(deployment):
    """Ray may replace a replica's process while no request runs on it: nothing fails, only its process id
    changes. Its prefix cache went with the old process, so the router must stop sending that prefix there."""
    app, clients, replica_set = make_app(deployment, client=RestartingClient)

    async def scenario(client: httpx.AsyncClient) -> None:
        async def pids_shown(c: httpx.AsyncClient) -> bool:
            return [r["pid"] for r in (await c.get("/health")).json()["replicas"]] == [1000, 1000]

        assert await until(pids_shown, client)
        first = await complete(client, SHARED + [7])
        assert first.status_code == 200
        holder = next(i for i, c in enumerate(clients) if c.served)
        assert replica_set.router.holds_prefix(holder, SHARED + [8])
        clients[holder].process = 2000  # the replica restarted between two polls

        async def new_pid_shown(c: httpx.AsyncClient) -> bool:
            return (await c.get("/health")).json()["replicas"][holder]["pid"] == 2000

        assert await until(new_pid_shown, client)
        assert not replica_set.router.holds_prefix(holder, SHARED + [8])
        health = (await client.get("/health")).json()
        assert health["status"] == "ok" and "replaced" in (replica_set.last_error[holder] or "")

    run(scenario, app)
