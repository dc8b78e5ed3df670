"""POST /v1/embeddings: pooled final hidden states, one L2-normalized vector per input, through the engine.

``input`` is a string, a list of strings, a list of token ids or a list of token-id lists (at most
``MAX_INPUTS``). Every input is an engine request scheduled like a prompt (chunked, batched with generating
requests); at most ``--max-num-seqs`` of one HTTP request are in the engine at a time, the rest follow as
those finish, so admission counts that many sequences whatever the number of inputs. ``encoding_format`` is
``float`` or ``base64`` (little-endian float32, what the official client asks for by default); ``dimensions``
is accepted only when it equals the model's width: the vectors are not Matryoshka-trained, so a shortened
vector would be meaningless. An input longer than the context is a 400 ``context_length_exceeded``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..engine.async_engine import AsyncEngine, EngineDeadError
from ..errors import ContextLengthError
from ..outputs import EmbeddingOutput
from . import fields
from . import responses as R
from .errors import invalid, short_repr
from .generation import ClientDisconnected, QueueTimeout, queue_expired, release_once, unless_disconnected
from .metrics import ServerMetrics
from .openai_routes import check_context, check_model, engine_failure, read_json, tokenize_prompts
from .protocol import MAX_USER_CHARS, Limits
from .state import ServerState

logger = logging.getLogger(__name__)

MAX_INPUTS = 2048  # OpenAI's limit per request
ENCODINGS = ("float", "base64")


@dataclass
class EmbeddingRequest:
    model: str | None
    inputs: list[str | list[int]]
    encoding_format: str
    user: str | None


def parse_inputs(body: dict[str, Any], vocab_size: int) -> list[str | list[int]]:
    return fields.prompts(body, "input", vocab_size, MAX_INPUTS)


def parse_embedding_request(body: dict[str, Any], limits: Limits, width: int) -> EmbeddingRequest:
    """Validate a /v1/embeddings body for a model whose vectors have `width` dimensions."""
    inputs = parse_inputs(body, limits.vocab_size)
    fmt = body.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ENCODINGS:
        raise invalid(f"encoding_format must be one of {list(ENCODINGS)}, got {short_repr(fmt)}", "encoding_format")
    dims = fields.integer(body, "dimensions", None, 1)
    if dims is not None and dims != width:
        raise invalid(
            f"dimensions {dims} cannot be honoured: this model's embeddings have {width} dimensions and "
            f"were not trained to be shortened (omit dimensions, or send {width})",
            "dimensions",
        )
    return EmbeddingRequest(fields.string(body, "model", 256), inputs, fmt, fields.string(body, "user", MAX_USER_CHARS))


class EmbedGroup:
    """The engine requests of one embedding request, at most `window` in the engine at a time."""

    def __init__(
        self,
        engine: AsyncEngine,
        metrics: ServerMetrics,
        request_id: str,
        prompts: Sequence[list[int]],
        pooling: str,
        window: int,
    ) -> None:
        self.engine, self.metrics, self.pooling, self.window = engine, metrics, pooling, window
        self.prompts = list(prompts)
        self.ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        self.results: list[EmbeddingOutput | None] = [None] * len(prompts)
        self.error: BaseException | None = None
        self.aborted = False
        self._next = 0
        self._in_flight: set[int] = set()
        self._done = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.arrival = time.perf_counter()

    def start(self) -> None:
        while self._next < len(self.prompts) and len(self._in_flight) < self.window:
            i = self._next
            self.engine.submit_embed(self.ids[i], self.prompts[i], self.pooling, partial(self._sink, i))
            self._in_flight.add(i)
            self._next += 1

    def _sink(self, index: int, out: EmbeddingOutput | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_output, index, out)
        except RuntimeError:  # the loop is closing
            pass

    def _on_output(self, index: int, out: EmbeddingOutput | BaseException) -> None:
        if self.aborted or self.error is not None:
            return
        self._in_flight.discard(index)
        if isinstance(out, BaseException):
            self.error = out
            self._done.set()
            return
        self.results[index] = out
        self.metrics.prompt_tokens.inc(len(out.prompt_token_ids))
        try:
            self.start()
        except Exception as e:  # noqa: BLE001 - e.g. the engine died between two inputs
            self.error = e
        if self.error is not None or all(r is not None for r in self.results):
            if self.error is None:
                self.metrics.e2e.observe(time.perf_counter() - self.arrival)
            self._done.set()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> list[EmbeddingOutput]:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        return [r for r in self.results if r is not None]

    def abort(self) -> None:
        """Cancel the inputs in the engine; idempotent."""
        self._cancel()
        self.aborted = True

    def _cancel(self) -> None:
        for i in self._in_flight:
            self.engine.abort(self.ids[i])
        self._in_flight.clear()
        self._done.set()

    def expire_if_queued(self, timeout: float) -> None:
        """The queue timeout ran out: fail with ``QueueTimeout`` unless some input has started."""
        if self.finished or any(r is not None for r in self.results):
            return
        self.error = queue_expired(self.engine, [self.ids[i] for i in self._in_flight], self.metrics, timeout)
        if self.error is not None:
            self._cancel()


def encode(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def embeddings(request: Request) -> Response:
    state: ServerState = request.app.state.server
    state.check_accepting()
    llm = state.llm
    assert llm is not None and state.limits is not None and state.engine is not None
    req = parse_embedding_request(await read_json(request), state.limits, llm.config.d_model)
    check_model(req.model, state)
    rid = R.new_id("embd")
    window = min(len(req.inputs), state.config.engine.max_num_seqs)
    state.admit(window)
    release = release_once(lambda: state.release(window))
    group: EmbedGroup | None = None
    timer: asyncio.TimerHandle | None = None
    try:
        prompts = await tokenize_prompts(lambda: [llm.encode_prompt(p) for p in req.inputs])
        for i, ids in enumerate(prompts):
            check_context(len(ids), None, state.limits.n_ctx, "input", generates=False, what=f"input[{i}]")
        group = EmbedGroup(state.engine, request.app.state.metrics, rid, prompts, llm.pooling, window)
        state.groups.add(group)  # type: ignore[arg-type]  (aborted like a RequestGroup at shutdown)
        group.start()
        if state.aborting:  # admitted before a forced shutdown, started after its sweep
            group.abort()
        logger.info(
            "%s: %d input(s) of %s tokens, pooling=%s, user=%r",
            rid,
            len(prompts),
            [len(p) for p in prompts][:16],
            llm.pooling,
            req.user,
        )
        if state.config.queue_timeout > 0:
            timer = asyncio.get_running_loop().call_later(
                state.config.queue_timeout, group.expire_if_queued, state.config.queue_timeout
            )
        outputs = await unless_disconnected(group.wait(), group, request.receive)  # type: ignore[arg-type]
    except ClientDisconnected:
        logger.info("%s: client disconnected; request aborted", rid)
        return Response(status_code=499)
    except (QueueTimeout, EngineDeadError, ContextLengthError) as e:
        raise engine_failure(e, "embedding", "input") from None
    except ValueError as e:
        raise invalid(str(e)[:300], "input") from None
    finally:
        if timer is not None:
            timer.cancel()
        if group is not None:
            group.abort()
            state.groups.discard(group)  # type: ignore[arg-type]
        release()
    data = [
        {"object": "embedding", "index": i, "embedding": encode(out.embedding or [], req.encoding_format)}
        for i, out in enumerate(outputs)
    ]
    n_tokens = sum(len(p) for p in prompts)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": state.model_name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )
