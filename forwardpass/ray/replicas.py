"""Engine replicas behind one server, without Ray: what runs in a replica, and the ingress's engine over them.

`EngineReplica` runs in each replica: an `LLM` and its engine loop, with `generate` / `embed` streaming the
engine's outputs and `stats` for the ingress (`deploy.py` makes it a Ray Serve deployment; tests call it in
process). `ReplicaSet` is the ingress's engine: it has `AsyncEngine`'s interface (`submit`, `submit_embed`, `abort`,
`stats`, `alive`), so the single-process server app runs on it unchanged. It checks requests against the model's
limits itself, picks a replica with the prefix router, follows the replica's stream, and polls every replica's
stats. A replica whose stream or stats call fails is marked down at once, and each of its in-flight requests ends
with `ReplicaLostError` (a 503); it is marked up again when its stats answer (Ray Serve has replaced it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ..config import EngineConfig
from ..engine.async_engine import EngineDeadError, ReplicaLostError
from ..engine.llm_engine import EngineStats
from ..errors import ForwardpassError
from ..outputs import EmbeddingOutput, RequestOutput
from ..sampling import SamplingParams
from .router import NoReplicaError, PrefixRouter

logger = logging.getLogger(__name__)

Sink = Callable[[Any], None]
STATS_INTERVAL_S = 0.5
STATS_TIMEOUT_S = 5.0


class EngineReplica:
    """One replica's engine: built from an `EngineConfig`, streaming each request's cumulative outputs."""

    def __init__(self, engine_config: EngineConfig) -> None:
        from ..llm import LLM

        self.llm = LLM(config=engine_config)
        self.engine = self.llm.start_async()

    async def _stream(self, request_id: str, submit: Callable[[Sink], None]) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        submit(lambda out: loop.call_soon_threadsafe(queue.put_nowait, out))
        finished = False
        try:
            while not finished:
                out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                finished = out.finished
                yield out
        finally:
            if not finished:  # the caller went away (abort, disconnect, cancelled stream)
                self.engine.abort(request_id)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        async for out in self._stream(request_id, lambda s: self.engine.submit(request_id, prompt_ids, params, s)):
            yield out

    async def embed(self, request_id: str, prompt_ids: list[int], pooling: str) -> AsyncIterator[EmbeddingOutput]:
        async for out in self._stream(
            request_id, lambda s: self.engine.submit_embed(request_id, prompt_ids, pooling, s)
        ):
            yield out

    def stats(self) -> EngineStats:
        if not self.engine.alive:
            raise EngineDeadError(f"the engine stopped: {self.engine.error!r}")
        return self.engine.stats()

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.engine.shutdown()
        self.llm.close()


class ReplicaClient(Protocol):
    """How the ingress reaches one replica (a Ray Serve handle, or an `EngineReplica` in process)."""

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Any]: ...

    def embed(self, request_id: str, prompt_ids: list[int], pooling: str) -> AsyncIterator[Any]: ...

    async def stats(self) -> EngineStats: ...


@dataclasses.dataclass
class ReplicaInfo:
    """What /health and /metrics show of one replica."""

    index: int
    healthy: bool
    in_flight: int
    routed: int
    prefix_routed: int
    stats: EngineStats | None
    last_error: str | None = None
    pid: int | None = None  # the replica's process, where its client tells


class ReplicaSet:
    """The ingress's engine over `clients`. `validate(prompt_ids, params)` and `validate_embed(prompt_ids)` are the
    model's own checks (the front's `LLMEngine`-free copy), run in the caller's thread as `AsyncEngine` does."""

    def __init__(
        self,
        clients: list[ReplicaClient],
        validate: Callable[[list[int], SamplingParams], None],
        validate_embed: Callable[[list[int]], None],
        block_size: int,
    ) -> None:
        self.clients = clients
        self.validate, self.validate_embed = validate, validate_embed
        self.router = PrefixRouter(len(clients), block_size=block_size)
        self.replica_stats: list[EngineStats | None] = [None] * len(clients)
        self.last_error: list[str | None] = [None] * len(clients)
        self.pids: list[int | None] = [None] * len(clients)
        self.down_since = [0.0] * len(clients)  # when each replica last failed
        self._tasks: dict[str, tuple[int, asyncio.Task]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task | None = None
        self.error: BaseException | None = None
        self.busy = False
        self.last_step_time = time.monotonic()
        self.step_hook: Callable[[], None] | None = None  # the server sets it; replicas count their own steps

    # ---- AsyncEngine's interface ----
    @property
    def alive(self) -> bool:
        return any(self.router.up)

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, sink: Sink) -> None:
        self.validate(prompt_ids, params)
        self._dispatch(request_id, prompt_ids, sink, lambda c: c.generate(request_id, prompt_ids, params))

    def submit_embed(self, request_id: str, prompt_ids: list[int], pooling: str, sink: Sink) -> None:
        self.validate_embed(prompt_ids)
        self._dispatch(request_id, prompt_ids, sink, lambda c: c.embed(request_id, prompt_ids, pooling))

    def abort(self, request_id: str) -> None:
        entry = self._tasks.pop(request_id, None)
        if entry is not None:
            self._call_in_loop(entry[1].cancel)

    def stats(self) -> EngineStats:
        """The sum over the replicas that answered last (the hit rate: their mean)."""
        self._start()
        stats = [s for s, up in zip(self.replica_stats, self.router.up) if s is not None and up]
        rates = [s.prefix_cache_hit_rate for s in stats]
        return EngineStats(
            running=sum(s.running for s in stats),
            waiting=sum(s.waiting for s in stats),
            kv_blocks_used=sum(s.kv_blocks_used for s in stats),
            kv_blocks_total=sum(s.kv_blocks_total for s in stats),
            prefix_cache_hit_rate=sum(rates) / len(rates) if rates else 0.0,
            preemptions=sum(s.preemptions for s in stats),
            running_seqs=tuple(seq for s in stats for seq in s.running_seqs),
        )

    def replicas(self) -> list[ReplicaInfo]:
        self._start()
        r = self.router
        return [
            ReplicaInfo(
                i,
                r.up[i],
                r.load[i],
                r.routed[i],
                r.prefix_routed[i],
                self.replica_stats[i],
                self.last_error[i],
                self.pids[i],
            )
            for i in range(len(self.clients))
        ]

    def shutdown(self, timeout: float | None = None) -> None:
        if self._poller is not None:
            self._call_in_loop(self._poller.cancel)
        for request_id in list(self._tasks):
            self.abort(request_id)

    # ---- routing and following ----
    def _dispatch(self, request_id: str, prompt_ids: list[int], sink: Sink, open_stream: Callable) -> None:
        self._start()
        assert self._loop is not None, "submit from the server's event loop"
        try:
            replica = self.router.choose(prompt_ids)
        except NoReplicaError as e:
            raise ReplicaLostError(f"{e}; retry later") from None
        self.router.started(replica, prompt_ids, self.router.holds_prefix(replica, prompt_ids))
        self.busy = True
        task = self._loop.create_task(self._follow(replica, request_id, open_stream(self.clients[replica]), sink))
        self._tasks[request_id] = (replica, task)

    async def _follow(self, replica: int, request_id: str, stream: AsyncIterator[Any], sink: Sink) -> None:
        try:
            async for out in stream:
                sink(out)
                self.last_step_time = time.monotonic()
        except asyncio.CancelledError:
            close = getattr(stream, "cancel", None) or getattr(stream, "aclose", None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
            raise
        except (ForwardpassError, ValueError) as e:  # the request's own error, raised by the replica
            sink(e)
        except Exception as e:  # noqa: BLE001 - anything else means the replica is gone
            logger.warning("replica %d failed during %s: %r", replica, request_id, e)
            self._mark_down(replica, repr(e))
            sink(ReplicaLostError(f"the engine replica running this request failed ({type(e).__name__}); retry"))
        finally:
            self._tasks.pop(request_id, None)
            self.router.finished(replica)
            self.busy = bool(self._tasks)

    def _mark_down(self, replica: int, why: str) -> None:
        if self.router.up[replica]:
            logger.warning("replica %d is down: %s", replica, why)
        self.router.mark_down(replica)
        self.down_since[replica] = time.monotonic()
        self.last_error[replica] = why
        self.replica_stats[replica] = None

    # ---- the stats poller ----
    def _start(self) -> None:
        """Bind to the running event loop and start polling (the first call from the loop: a route, a submit)."""
        if self._poller is not None:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # not in the loop (a thread of the pool): a later call starts it
            return
        self._poller = self._loop.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.gather(*(self._poll_one(i) for i in range(len(self.clients))))
            if not self.busy:
                self.last_step_time = time.monotonic()
            await asyncio.sleep(STATS_INTERVAL_S)

    async def _poll_one(self, i: int) -> None:
        client, asked = self.clients[i], time.monotonic()
        try:
            stats = await asyncio.wait_for(client.stats(), STATS_TIMEOUT_S)
            pid = await asyncio.wait_for(client.pid(), STATS_TIMEOUT_S) if hasattr(client, "pid") else None
        except Exception as e:  # noqa: BLE001 - any failure: down until it answers again
            self._mark_down(i, repr(e))
            return
        if asked < self.down_since[i]:  # an answer from before the replica failed
            return
        if pid is not None and self.pids[i] not in (None, pid) and self.router.up[i]:
            # its process was replaced between two polls (no request saw it die): what it cached is gone
            self._mark_down(i, f"replaced: process {self.pids[i]} ended, {pid} took its place")
        if pid is not None:
            self.pids[i] = pid
        if not self.router.up[i]:
            logger.info("replica %d is up", i)
        self.router.mark_up(i)
        self.replica_stats[i] = stats

    def _call_in_loop(self, fn: Callable[[], Any]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None or running is self._loop:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)
