"""Run the app under uvicorn: load the model once the socket is up, drain on SIGTERM, exit when the engine dies.

Shutdown (docs/reliability.md, Shutdown): the first SIGTERM/SIGINT makes new requests and /health answer 503 while
in-flight requests finish, for up to ``shutdown_timeout`` seconds; what is still running then is aborted
(``finish_reason: "abort"``) and the process exits 0. A second signal exits at once. If the engine thread dies,
in-flight requests get their error, /health turns 503, and the process exits 1 within a few seconds so a
supervisor can restart it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from types import FrameType
from typing import Any

import uvicorn

from .app import create_app
from .config import ServerConfig
from .state import ServerState

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024  # h11 answers 400 to a request head larger than this
ABORT_GRACE_S = 2.0  # after aborting leftovers, how long their clients get to hear "abort"
MONITOR_INTERVAL_S = 0.2


class ForwardpassServer(uvicorn.Server):
    """uvicorn's server with forwardpass's signal handling, model loading and engine watchdog."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.exit_code = 0
        self._signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        state.request_exit = self.request_exit

    def request_exit(self, code: int) -> None:
        self.exit_code = max(self.exit_code, code)
        self.should_exit = True

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        self._loop = asyncio.get_running_loop()
        self.state.start_loading(self._loop)
        self._spawn(self._watch_engine())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler (main thread): the first signal drains, the second exits at once."""
        if self._signalled:
            sys.stderr.write("second signal: exiting now\n")
            sys.stderr.flush()
            os._exit(1)
        self._signalled = True
        if self._loop is None:  # still starting
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._spawn, self._drain())

    async def _drain(self) -> None:
        state = self.state
        state.draining = True
        timeout = state.config.shutdown_timeout
        logger.info("shutting down: finishing %d in-flight request(s), at most %.0f s", state.active_requests, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while state.active_requests and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if state.active_requests:
            logger.warning("shutdown timeout: aborting %d request(s)", state.active_requests)
            state.abort_all()
            deadline = loop.time() + ABORT_GRACE_S
            while state.active_requests and loop.time() < deadline:
                await asyncio.sleep(0.05)
        self.should_exit = True

    async def _watch_engine(self) -> None:
        state = self.state
        while not self.should_exit:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            engine = state.engine
            if engine is not None and not engine.alive and not state.dead:
                state.dead = True
                logger.error(
                    "the engine thread died (%r); exiting so that a supervisor can restart the server", engine.error
                )
                await asyncio.sleep(0.5)  # let in-flight requests send their error
                self.request_exit(1)


def run_server(config: ServerConfig) -> int:
    """Serve until shut down; returns the process exit code."""
    state = ServerState(config)
    app = create_app(config, state)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=3,
        timeout_keep_alive=5,
        root_path=config.root_path,
        lifespan="off",
    )
    server = ForwardpassServer(uv_config, state)
    logger.info(
        "serving %r on http://%s:%d (model loads in the background)", state.model_name, config.host, config.port
    )
    server.run()
    if state.engine is not None:
        state.engine.shutdown(timeout=2.0)
    if state.llm is not None:
        state.llm.close()  # tensor-parallel workers, if any
    if state.load_error is not None:
        return 1
    return server.exit_code
