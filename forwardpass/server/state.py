"""The server's live state: model loading, health, admission and shutdown.

The model loads in a background thread after the socket is up, so ``/health`` can answer 503 "Loading model"
meanwhile. Admission counts sequences (a request with ``n=2`` is two): at most ``max_num_seqs`` run and
``max_queue`` wait; beyond that a request is refused at once with 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import faults
from .config import ServerConfig
from .errors import APIError, unavailable
from .protocol import Limits
from .slots import SlotTable

if TYPE_CHECKING:
    from ..engine.async_engine import AsyncEngine
    from ..llm import LLM
    from .generation import RequestGroup

logger = logging.getLogger(__name__)


class ServerState:
    """Shared by every request: the model once loaded, the engine, and the counters admission needs."""

    def __init__(self, config: ServerConfig, replicas: int = 1) -> None:
        self.config = config
        self.seq_slots = replicas * config.engine.max_num_seqs  # engine replicas behind this server (`ray/`)
        self.model_name = config.model_name
        self.created = int(time.time())
        self.llm: LLM | None = None
        self.engine: AsyncEngine | None = None
        self.limits: Limits | None = None
        self.load_error: BaseException | None = None
        self.draining = False
        self.dead = False
        self.active_seqs = 0  # admitted sequences not yet finished (running or waiting)
        self.active_requests = 0
        self.request_exit: Callable[[int], None] = lambda code: None  # set by the runner
        self._ready = threading.Event()
        self.fault = faults.from_env()
        self.groups: set[RequestGroup] = set()  # live requests, so a forced shutdown can abort them
        self.aborting = False  # set by abort_all: requests that start afterwards are aborted at once
        self.slots = SlotTable(self.seq_slots)
        self.engine_steps = 0  # engine steps run (counted in the engine thread, read by /metrics)

    # ---- loading (background thread) ----
    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        threading.Thread(target=self._load, args=(loop,), name="forwardpass-load", daemon=True).start()

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        from ..llm import LLM, freeze_heap

        try:
            faults.delay_load(self.fault)
            llm = LLM(config=self.config.engine)
            freeze_heap()
            print(llm.system_info(), file=sys.stderr, flush=True)
            engine = llm.start_async()
            engine.step_hook = self._step_hook(faults.step_hook(self.fault) if self.fault is not None else None)
        except Exception as e:  # noqa: BLE001 - any load failure ends the server with one clear line
            self.load_error = e
            logger.error("cannot load model %r: %s", self.config.engine.model, e)
            loop.call_soon_threadsafe(self.request_exit, 1)
            return
        self.attach(llm, engine)
        logger.info(
            "model %r ready (context %d tokens, %d max sequences)",
            self.model_name,
            llm.ctx,
            self.config.engine.max_num_seqs,
        )

    def attach(self, llm: LLM, engine: AsyncEngine) -> None:
        """The loaded model and its engine (`ray/` attaches a weightless front and its replicas): ready."""
        self.llm, self.engine = llm, engine
        self.limits = Limits(vocab_size=llm.vocab_size, n_ctx=llm.ctx)
        self._ready.set()

    def _step_hook(self, fault_hook: Callable[[], None] | None) -> Callable[[], None]:
        """Runs in the engine thread before every step: counts steps, then the test fault (if any)."""

        def hook() -> None:
            self.engine_steps += 1
            if fault_hook is not None:
                fault_hook()

        return hook

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # ---- health ----
    def health_problem(self) -> str | None:
        """Why the server cannot take work now, or None when it is healthy."""
        if self.dead or (self.engine is not None and not self.engine.alive):
            return "Engine is dead"
        if not self.ready:
            return "Loading model"
        if self.draining:
            return "Shutting down"
        engine = self.engine
        assert engine is not None
        if engine.busy and time.monotonic() - engine.last_step_time > self.config.stall_timeout:
            return "Engine stalled"
        return None

    def check_accepting(self) -> None:
        """Raise 503 unless new generation requests can be taken."""
        problem = self.health_problem()
        if problem == "Loading model":
            raise APIError(503, "Loading model", type="unavailable_error", code=503, headers={"Retry-After": "1"})
        if problem is not None:
            raise unavailable(problem, retry_after=5)

    # ---- admission ----
    def admit(self, n_seqs: int) -> None:
        """Reserve room for ``n_seqs`` sequences or raise 503 (queue full) at once."""
        capacity = self.seq_slots + self.config.max_queue
        if n_seqs > capacity:
            raise APIError(
                400, f"this request needs {n_seqs} sequences but the server holds at most {capacity}", param="n"
            )
        if self.active_seqs + n_seqs > capacity:
            raise unavailable(
                f"the server is busy: {self.active_seqs} sequences running or queued (limit {capacity}); retry later",
                retry_after=1,
                code="queue_full",
            )
        self.active_seqs += n_seqs
        self.active_requests += 1

    def release(self, n_seqs: int) -> None:
        self.active_seqs -= n_seqs
        self.active_requests -= 1

    def abort_all(self) -> None:
        """Abort every in-flight request (their clients see finish_reason "abort"), and those that reach the engine
        from now on: a request admitted before the drain may still be tokenizing or compiling its grammar."""
        self.aborting = True
        for group in list(self.groups):
            group.abort()
