"""Server-sent events: ``data: {json}\\n\\n`` lines ending with ``data: [DONE]``, and a response that aborts
its request the moment the client disconnects."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .generation import until_disconnected

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
# Line breaks to Python's str.splitlines() (which some SSE clients, httpx's aiter_lines among them, split on)
# that json.dumps leaves raw; escaped, they stay valid JSON and every client sees one line per event.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def event(data: dict[str, Any]) -> bytes:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKS)
    return b"data: " + text.encode("utf-8") + b"\n\n"


class SSEResponse(StreamingResponse):
    """Streams ``events``; ``on_close`` runs exactly once however the stream ends (done, error, disconnect).

    Starlette's own StreamingResponse may never start the body iterator when the client has already gone,
    so cleanup placed in the iterator's ``finally`` could be skipped; here it is guaranteed.
    """

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    await until_disconnected(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for chunk in self.events:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        except OSError:  # the connection broke mid-send
            logger.debug("client went away during a stream")
        finally:
            try:
                await self.events.aclose()  # type: ignore[attr-defined]
            finally:
                self.on_close()
