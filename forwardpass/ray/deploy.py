"""Ray Serve: N engine deployments behind one ingress deployment that serves the single-process server's app.

Each engine replica is its own deployment (`engine-0` .. `engine-{N-1}`, one replica each) so that the ingress
chooses the replica itself (prefix-aware, `router.py`); Ray Serve health-checks each one and replaces it when its
process dies. The ingress is the FastAPI app of `server/app.py` (every route, auth, limit and stream) over a
`ReplicaSet`, reaching the engines through their deployment handles, streaming.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..config import EngineConfig
from ..engine.llm_engine import EngineStats
from ..llm import BLOCK_SIZE, default_threads
from ..sampling import SamplingParams
from ..server.app import create_app
from ..server.config import ServerConfig
from ..server.state import ServerState
from .front import FrontLLM
from .replicas import EngineReplica, ReplicaSet

logger = logging.getLogger(__name__)
APP_NAME = "forwardpass"
HEALTH_CHECK_PERIOD_S = 2.0


class ServeEngineReplica(EngineReplica):
    """`EngineReplica` as a Ray Serve deployment: Serve calls `check_health` and replaces a replica that fails."""

    def check_health(self) -> None:
        self.stats()  # raises once the engine loop has died


class RayReplicaClient:
    """One engine deployment, reached through its handle (streaming for generation)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> Any:
        return self.streaming.generate.remote(request_id, prompt_ids, params)

    def embed(self, request_id: str, prompt_ids: list[int], pooling: str) -> Any:
        return self.streaming.embed.remote(request_id, prompt_ids, pooling)

    async def stats(self) -> EngineStats:
        return await self.handle.stats.remote()

    async def pid(self) -> int:
        return await self.handle.pid.remote()


@serve.ingress()
class Ingress:
    """The server app over the engine deployments' handles."""

    async def __init__(self, config: ServerConfig, *engines: DeploymentHandle) -> None:
        front = FrontLLM(config.engine, len(engines))
        clients = [RayReplicaClient(h) for h in engines]
        self.replicas = ReplicaSet(clients, front.engine.validate, front.engine.validate_embed, BLOCK_SIZE)
        self.replicas._start()  # in the replica's event loop: poll the engines from now on
        self.state = ServerState(config, replicas=len(engines))
        self.state.attach(front, self.replicas)
        self.server_app = create_app(config, self.state)  # (`app` is the wrapper's)

    def __serve_build_asgi_app__(self) -> Any:
        return self.server_app


def build_app(config: ServerConfig | None = None, replicas: int = 2, **engine_options: Any) -> Any:
    """The Ray Serve application: `replicas` engine deployments and the ingress, for `serve.run` (or
    `serve run module:app` with `app = build_app(...)`). `engine_options` are `EngineConfig` fields."""
    config = config or ServerConfig()
    if engine_options:
        config = dataclasses.replace(config, engine=config.engine.replace(**engine_options))
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    engine: EngineConfig = config.engine
    queue = engine.max_num_seqs + config.max_queue
    cpus = engine.threads or default_threads()
    engines = [
        serve.deployment(
            ServeEngineReplica,
            name=f"engine-{i}",
            num_replicas=1,
            max_ongoing_requests=queue + 8,  # admission is the ingress's; Serve must not queue in front of it
            health_check_period_s=HEALTH_CHECK_PERIOD_S,
            ray_actor_options={"num_cpus": cpus},
        ).bind(engine)
        for i in range(replicas)
    ]
    ingress = serve.deployment(
        Ingress,
        name="ingress",
        num_replicas=1,
        max_ongoing_requests=replicas * queue + 64,
        ray_actor_options={"num_cpus": 0},  # tokenizing and routing: light
    )
    return ingress.bind(config, *engines)


def serve_replicas(config: ServerConfig, replicas: int, address: str | None = None) -> int:
    """`forwardpass serve --replicas N`: start a local Ray instance (or join `address`), deploy, serve until
    SIGINT / SIGTERM, then tear the application down."""
    if address is None:
        cpus = max(os.cpu_count() or 1, replicas * (config.engine.threads or default_threads()))
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 << 20)
    else:
        ray.init(address=address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_app(config, replicas), name=APP_NAME, route_prefix="/")
        logger.info("serving %d engine replicas on http://%s:%d", replicas, config.host, config.port)
        print(f"forwardpass: {replicas} replicas on http://{config.host}:{config.port}", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()
        ray.shutdown()
    return 0
