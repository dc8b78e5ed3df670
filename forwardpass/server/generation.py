"""One HTTP request's engine requests, seen from asyncio: submit, follow, abort, and time them.

The engine thread hands each update to ``RequestGroup`` through ``call_soon_threadsafe``. Updates are
cumulative snapshots, so the group keeps only the latest one per prompt: a slow client never makes outputs
pile up in memory. ``abort()`` cancels whatever is unfinished (its KV blocks are freed before the engine's
next step) and wakes the consumer, which then sees ``finish_reason == "abort"``.

Queue timeout (docs/reliability.md): ``expire_if_queued()``, called when ``--queue-timeout`` runs out, removes the
request from the engine's queue and fails it with ``QueueTimeout`` (a 503) unless it has started: some output
arrived, or the engine's last published running batch holds it (its prefill is under way).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import TypeVar

from starlette.types import Receive

from ..engine.async_engine import AsyncEngine
from ..outputs import CompletionOutput, RequestOutput
from ..sampling import SamplingParams
from .metrics import ServerMetrics

R = TypeVar("R")
logger = logging.getLogger(__name__)


class QueueTimeout(Exception):
    """The request waited longer than ``--queue-timeout`` for a slot and was removed from the queue."""


def queue_expired(
    engine: AsyncEngine, request_ids: Iterable[str], metrics: ServerMetrics, timeout: float
) -> QueueTimeout | None:
    """The error of a group whose queue timeout ran out (counted), or None if one of `request_ids` is running."""
    running = {seq.request_id for seq in engine.stats().running_seqs}
    if running.intersection(request_ids):
        return None
    metrics.queue_timeouts.inc()
    return QueueTimeout(f"no slot became free within the queue timeout of {timeout:g} s; retry later")


class RequestGroup:
    """The engine requests of one HTTP request: one per prompt, each with ``params.n`` samples."""

    def __init__(
        self,
        engine: AsyncEngine,
        metrics: ServerMetrics,
        request_id: str,
        prompts: Sequence[list[int]],
        params: SamplingParams,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.params = params
        self.prompts = list(prompts)
        self.ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        self.latest: list[RequestOutput | None] = [None] * len(prompts)
        self.error: BaseException | None = None
        self.aborted = False
        self._changed = asyncio.Event()
        self._first = asyncio.Event()  # set by the first output, an error, or an abort
        self._loop = asyncio.get_running_loop()
        self._submitted = 0
        self.arrival = time.perf_counter()
        self._first_token: float | None = None
        self._last_token = self.arrival
        self._done_recorded = False

    # ---- lifecycle ----
    def start(self) -> None:
        """Submit every prompt; raises (ValueError, ContextLengthError, EngineDeadError) like ``submit``."""
        for i, prompt in enumerate(self.prompts):
            self.engine.submit(self.ids[i], prompt, self.params, partial(self._sink, i))
            self._submitted += 1

    def abort(self) -> None:
        """Cancel what is unfinished; idempotent."""
        if self.finished:
            return
        for i in range(self._submitted):
            out = self.latest[i]
            if out is None or not out.finished:
                self.engine.abort(self.ids[i])
        self.aborted = True
        self._changed.set()
        self._first.set()

    def expire_if_queued(self, timeout: float) -> None:
        """The queue timeout ran out: fail with ``QueueTimeout`` unless the request has started."""
        if self.finished or any(out is not None for out in self.latest):
            return
        self.error = queue_expired(self.engine, self.ids, self.metrics, timeout)
        if self.error is None:
            return
        for request_id in self.ids[: self._submitted]:
            self.engine.abort(request_id)
        self._changed.set()
        self._first.set()

    @property
    def finished(self) -> bool:
        return self.aborted or self.error is not None or all(o is not None and o.finished for o in self.latest)

    # ---- updates ----
    def _sink(self, index: int, out: RequestOutput | BaseException) -> None:
        """Engine thread: hand the update to the event loop (which may already be closing)."""
        try:
            self._loop.call_soon_threadsafe(self._on_output, index, out)
        except RuntimeError:
            pass

    def _on_output(self, index: int, out: RequestOutput | BaseException) -> None:
        if self.aborted:
            return
        if isinstance(out, BaseException):
            self.error = out
        else:
            self._record(self.latest[index], out)
            self.latest[index] = out
        self._changed.set()
        self._first.set()
        if self.finished:
            self._record_end()

    def _record(self, old: RequestOutput | None, new: RequestOutput) -> None:
        """Token counters and latency histograms (TTFT, inter-token latency)."""
        before = sum(len(o.token_ids) for o in old.outputs) if old is not None else 0
        added = sum(len(o.token_ids) for o in new.outputs) - before
        if added <= 0:
            return
        now = time.perf_counter()
        self.metrics.generation_tokens.inc(added)
        if old is None:  # this prompt's prefill is done (counted here, so a request aborted while queued is not)
            self.metrics.prompt_tokens.inc(len(new.prompt_token_ids))
        if self._first_token is None:
            self._first_token = now
            self.metrics.ttft.observe(now - self.arrival)
        else:
            gap = (now - self._last_token) / added
            for _ in range(added):
                self.metrics.itl.observe(gap)
        self._last_token = now

    def _record_end(self) -> None:
        if not self._done_recorded and self.error is None:
            self._done_recorded = True
            self.metrics.e2e.observe(time.perf_counter() - self.arrival)

    async def next_update(self) -> list[RequestOutput]:
        """Wait for a change, then return the latest outputs (raises the engine's error, if any)."""
        if not self.finished:
            await self._changed.wait()
        self._changed.clear()
        if self.error is not None:
            raise self.error
        return self.snapshot()

    async def wait_first(self) -> None:
        """Return once the first output, an error or an abort has arrived."""
        await self._first.wait()

    def snapshot(self) -> list[RequestOutput]:
        """The latest output of every prompt; after an abort, unfinished samples read ``abort``."""
        outs = []
        for i, out in enumerate(self.latest):
            if out is None:
                out = RequestOutput(
                    self.ids[i], self.prompts[i], [CompletionOutput(index=k) for k in range(self.params.n)]
                )
            if self.aborted:
                for o in out.outputs:
                    o.finish_reason = o.finish_reason or "abort"
            outs.append(out)
        return outs

    async def wait_finished(self) -> list[RequestOutput]:
        while not self.finished:
            await self.next_update()
        if self.error is not None:
            raise self.error
        return self.snapshot()


async def until_disconnected(receive: Receive) -> None:
    """Return when the client has gone. Call only after the request body has been read."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


async def collect(group: RequestGroup, receive: Receive) -> list[RequestOutput]:
    """Await a non-streaming request while watching for a disconnect (which aborts it at once).

    Starlette does not notice a client that leaves during a plain request, so without this watcher the
    request would run to the end for nobody.
    """
    return await unless_disconnected(group.wait_finished(), group, receive)


async def wait_started(group: RequestGroup, receive: Receive) -> None:
    """Wait for the first output of a request (raising its error, such as ``QueueTimeout``), watching for a
    disconnect meanwhile (which aborts it and raises ``ClientDisconnected``)."""
    await unless_disconnected(group.wait_first(), group, receive)
    if group.error is not None:
        raise group.error


async def unless_disconnected(awaitable: Awaitable[R], group: RequestGroup, receive: Receive) -> R:
    """The result of `awaitable`, unless the client leaves first: then the request is aborted at once and
    ``ClientDisconnected`` raised."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            group.abort()
            raise ClientDisconnected()
        return work.result()
    finally:
        for task in (work, watcher):
            if not task.done():
                task.cancel()


def release_once(callback: Callable[[], None]) -> Callable[[], None]:
    """Wrap ``callback`` so that calling it twice does nothing the second time."""
    called = False

    def once() -> None:
        nonlocal called
        if not called:
            called = True
            callback()

    return once
