"""AsyncEngine: one engine loop in a background thread, fed by any number of threads or asyncio tasks.

Callers never touch the engine's state: they post commands (add, abort) to a queue that the loop drains between
steps, and receive each request's outputs through their own sink. So JSON and HTTP stay in the server, tensors
stay in this thread, and an abort takes effect before the next step (its blocks are freed at once).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import ForwardpassError
from ..outputs import EmbeddingOutput, RequestOutput
from ..sampling import SamplingParams
from .llm_engine import EngineStats, LLMEngine

logger = logging.getLogger(__name__)

Sink = Callable[[RequestOutput | EmbeddingOutput | BaseException], None]


class EngineDeadError(ForwardpassError):
    """The engine loop stopped after an unexpected error; the process should be restarted."""


class ReplicaLostError(EngineDeadError):
    """The engine replica running a request died, or none is up (`ray/replicas.py`): the server answers 503 and
    the client may retry, since the deployment replaces the replica."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._sinks: dict[str, Sink] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.last_step_time = time.monotonic()  # when the loop last finished a step or found nothing to do
        self.busy = False  # work pending (the stall detector only cares then)
        self._stats = engine.stats()
        self.step_hook: Callable[[], None] | None = None  # tests inject stalls and faults here

    # ---- lifecycle ----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="forwardpass-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread is not None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        return self._stats

    # ---- requests (any thread) ----
    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, sink: Sink) -> None:
        """Queue a request; `sink` receives every output update (the last one finished) or an exception."""
        if self.error is not None:
            raise EngineDeadError(f"the engine has stopped: {self.error!r}")
        self.engine.validate(prompt_ids, params)  # raise bad input in the caller's thread
        self._commands.put(("add", (request_id, prompt_ids, params, sink)))
        self._wakeup.set()

    def submit_embed(self, request_id: str, prompt_ids: list[int], pooling: str, sink: Sink) -> None:
        """Queue an embedding request; `sink` receives its one `EmbeddingOutput` or an exception."""
        if self.error is not None:
            raise EngineDeadError(f"the engine has stopped: {self.error!r}")
        self.engine.validate_embed(prompt_ids)
        self._commands.put(("embed", (request_id, prompt_ids, pooling, sink)))
        self._wakeup.set()

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wakeup.set()

    # ---- the loop (engine thread) ----
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_commands()
                self.busy = self.engine.has_unfinished()
                if not self.busy:
                    self.last_step_time = time.monotonic()
                    self._wakeup.wait(0.5)
                    self._wakeup.clear()
                    continue
                if self.step_hook is not None:
                    self.step_hook()
                for out in self.engine.step():
                    self._deliver(out)
                self._stats = self.engine.stats()
                self.last_step_time = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - every in-flight request must hear about it
            logger.exception("engine loop died")
            self.error = e
            dead = EngineDeadError(f"the engine stopped: {e!r}")
            for sink in list(self._sinks.values()):
                sink(dead)
            self._sinks.clear()

    def _drain_commands(self) -> None:
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                request_id, prompt_ids, params, sink = arg
                try:
                    self.engine.add_request(prompt_ids, params, request_id)
                    self._sinks[request_id] = sink
                except (ForwardpassError, ValueError) as e:  # raced with a bad request; it alone fails
                    sink(e)
            elif kind == "embed":
                request_id, prompt_ids, pooling, sink = arg
                try:
                    self.engine.add_embed_request(prompt_ids, pooling, request_id)
                    self._sinks[request_id] = sink
                except (ForwardpassError, ValueError) as e:
                    sink(e)
            elif kind == "abort":
                self.engine.abort(arg)
                self._sinks.pop(arg, None)
        self._stats = self.engine.stats()

    def _deliver(self, out: RequestOutput | EmbeddingOutput) -> None:
        sink = self._sinks.get(out.request_id)
        if sink is None:
            return
        if out.finished:
            del self._sinks[out.request_id]
        sink(out)
