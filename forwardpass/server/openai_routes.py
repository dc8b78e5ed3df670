"""POST /v1/chat/completions and /v1/completions: validate, admit, tokenize off the event loop, generate.

Context rules (docs/reliability.md, Context and length): a prompt that leaves no room for one token is a 400
``context_length_exceeded`` carrying ``n_prompt_tokens`` and ``n_ctx``, decided before any SSE byte; so is
an explicit ``max_tokens`` that does not fit; without ``max_tokens`` the output is capped by the context
(``finish_reason: "length"``). With ``truncate_prompt_tokens`` the prompt is cut to its last tokens first.

Queue timeout: with ``--queue-timeout``, a request that has not started when it runs out is removed from
the engine's queue and answered 503 ``queue_timeout`` with ``Retry-After``. A stream then sends its headers
only once the first output is there, so that a queue timeout can still be a plain 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..engine.async_engine import EngineDeadError, ReplicaLostError
from ..errors import ChatTemplateError, ContextLengthError, StructuredOutputError, TokenizerError
from ..outputs import RequestOutput
from ..structured.params import StructuredOutputsParams
from ..tools import ToolError, ToolPlan, plan_tools
from . import responses as R
from .errors import APIError, invalid, short_repr, unavailable
from .generation import ClientDisconnected, QueueTimeout, RequestGroup, collect, release_once, wait_started
from .jsonbody import parse_json_object
from .protocol import ChatRequest, CompletionRequest, GenerationRequest, parse_chat_request, parse_completion_request
from .sse import SSEResponse
from .state import ServerState
from .streaming import StreamInfo, chat_events, completion_events

logger = logging.getLogger(__name__)

INLINE_PARSE_BYTES = 64 * 1024  # larger bodies are parsed in a worker thread


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > INLINE_PARSE_BYTES:
        return await run_in_threadpool(parse_json_object, body)
    return parse_json_object(body)


def check_model(name: str | None, state: ServerState) -> None:
    if name is not None and name not in (state.model_name, "default"):
        raise APIError(
            404,
            f"the model {short_repr(name)} does not exist (this server serves "
            f"{state.model_name!r}, also reachable as 'default')",
            param="model",
            code="model_not_found",
        )


def context_error(message: str, n_prompt: int, n_ctx: int, param: str) -> APIError:
    return APIError(
        400, message, param=param, code="context_length_exceeded", extra={"n_prompt_tokens": n_prompt, "n_ctx": n_ctx}
    )


def engine_failure(e: QueueTimeout | EngineDeadError | ContextLengthError, what: str, param: str) -> APIError:
    """The answer to a request the engine did not serve: 503 (retry) for a queue timeout or a lost replica, 400
    on `param` for a prompt over the context, 500 ("`what` failed") for a dead engine."""
    if isinstance(e, QueueTimeout):
        return unavailable(str(e), retry_after=1, code="queue_timeout")
    if isinstance(e, ReplicaLostError):
        return unavailable(str(e), retry_after=1, code="replica_lost")
    if isinstance(e, ContextLengthError):
        return context_error(str(e), e.n_prompt_tokens, e.n_ctx, param)
    return APIError(500, f"{what} failed: {e}", type="server_error", code="engine_error")


def check_context(
    n_prompt: int, max_tokens: int | None, n_ctx: int, param: str, generates: bool = True, what: str = "the prompt"
) -> None:
    """A 400 ``context_length_exceeded`` unless `what` (`n_prompt` tokens) fits the context: with room for one
    generated token, and for `max_tokens` when given, if it `generates`; whole otherwise (embeddings)."""
    if n_prompt > (n_ctx - 1 if generates else n_ctx):
        room = ", with room for at least one generated token" if generates else ""
        raise context_error(
            f"{what} has {n_prompt} tokens but the model's context holds {n_ctx} tokens{room}",
            n_prompt,
            n_ctx,
            param,
        )
    if max_tokens is not None and n_prompt + max_tokens > n_ctx:
        raise context_error(
            f"the prompt has {n_prompt} tokens and max_tokens is {max_tokens}: "
            f"{n_prompt + max_tokens} tokens exceed the model's context of {n_ctx} tokens",
            n_prompt,
            n_ctx,
            "max_tokens",
        )


async def tokenize_prompts(fn: Callable[[], list[list[int]]], structured_param: str | None = None) -> list[list[int]]:
    try:
        return await run_in_threadpool(fn)
    except StructuredOutputError as e:  # the schema or grammar did not compile
        param = structured_param or "structured_outputs"
        message = str(e).replace("structured_outputs.", f"{param}: ", 1) if param != "structured_outputs" else str(e)
        raise invalid(message[:400], param) from None
    except ChatTemplateError as e:
        logger.warning("chat template failed: %r", str(e))
        raise APIError(
            500, f"the model's chat template failed: {e}", type="server_error", code="chat_template_error"
        ) from None
    except (TokenizerError, ValueError) as e:
        raise invalid(str(e)[:300]) from None


def truncate_prompts(
    prompts: list[list[int]], keep: int, max_tokens: int | None, n_ctx: int
) -> tuple[list[list[int]], list[bool]]:
    """Keep the last ``keep`` tokens of each prompt (-1: as many as leave room for ``max_tokens``, or for one
    token); also say which prompts lost tokens."""
    if keep == -1:
        keep = n_ctx - (max_tokens or 1)
    return [ids[-keep:] for ids in prompts], [len(ids) > keep for ids in prompts]


# (group, prompts as run, which prompts were truncated) -> SSE bytes
StreamFn = Callable[[RequestGroup, list[list[int]], list[bool]], AsyncIterator[bytes]]
# (outputs, prompts as run, which prompts were truncated) -> the response body
BodyFn = Callable[[list[RequestOutput], list[list[int]], list[bool]], dict[str, Any]]


async def generate(
    request: Request,
    req: GenerationRequest,
    rid: str,
    n_prompts: int,
    tokenize: Callable[[], list[list[int]]],
    param: str,
    stream_fn: StreamFn,
    body_fn: BodyFn,
    structured_param: str | None = None,
) -> Response:
    """Admission, tokenization, context checks, then a streamed or a whole answer."""
    state: ServerState = request.app.state.server
    n_seqs = req.params.n * n_prompts
    state.admit(n_seqs)
    release = release_once(lambda: state.release(n_seqs))
    group: RequestGroup | None = None
    timer: asyncio.TimerHandle | None = None
    streaming = False
    try:
        prompts = await tokenize_prompts(tokenize, structured_param)
        assert state.limits is not None and state.engine is not None
        truncated = [False] * len(prompts)
        if req.truncate_prompt_tokens is not None:
            prompts, truncated = truncate_prompts(
                prompts, req.truncate_prompt_tokens, req.params.max_tokens, state.limits.n_ctx
            )
        for ids in prompts:
            check_context(len(ids), req.params.max_tokens, state.limits.n_ctx, param)
        group = RequestGroup(state.engine, request.app.state.metrics, rid, prompts, req.params)
        state.groups.add(group)
        group.start()  # raises for what only the engine checks (e.g. logit_bias ids against the vocabulary)
        if state.aborting:  # admitted before a forced shutdown, started after its sweep
            group.abort()
        logger.info(
            "%s: %d prompt(s) of %s tokens%s, n=%d, stream=%s, user=%r",
            rid,
            len(prompts),
            [len(p) for p in prompts],
            " (truncated)" if any(truncated) else "",
            req.params.n,
            req.stream,
            req.user,
        )
        queue_timeout = state.config.queue_timeout
        if queue_timeout > 0:
            timer = asyncio.get_running_loop().call_later(queue_timeout, group.expire_if_queued, queue_timeout)
        if req.stream:
            if timer is not None:
                await wait_started(group, request.receive)
            streaming = True
            return SSEResponse(stream_fn(group, prompts, truncated), on_close=_closer(state, group, release, timer))
        outputs = await collect(group, request.receive)
        body = body_fn(outputs, prompts, truncated)
        flag = _truncated(req, truncated)
        if flag is not None:
            body["truncated"] = flag
        return JSONResponse(body)
    except ClientDisconnected:
        logger.info("%s: client disconnected; request aborted", rid)
        return Response(status_code=499)
    except QueueTimeout as e:
        logger.info("%s: queue timeout", rid)
        raise engine_failure(e, "generation", param) from None
    except (EngineDeadError, ContextLengthError) as e:
        raise engine_failure(e, "generation", param) from None
    except ValueError as e:
        raise invalid(str(e)[:300]) from None
    finally:
        if not streaming:
            _closer(state, group, release, timer)()


def _closer(
    state: ServerState, group: RequestGroup | None, release: Callable[[], None], timer: asyncio.TimerHandle | None
) -> Callable[[], None]:
    def close() -> None:
        if timer is not None:
            timer.cancel()
        if group is not None:
            group.abort()
            state.groups.discard(group)
        release()

    return close


def _truncated(req: GenerationRequest, truncated: list[bool]) -> bool | None:
    """The ``truncated`` flag responses carry: only when truncation was asked for."""
    return any(truncated) if req.truncate_prompt_tokens is not None else None


def _logprob_formatter(request: Request, wanted: bool) -> R.LogprobFormatter | None:
    return R.LogprobFormatter(request.app.state.server.llm.tokenizer) if wanted else None


def with_constraint(
    state: ServerState,
    req: GenerationRequest,
    constraint: StructuredOutputsParams | None,
    tokenize: Callable[[], list[list[int]]],
) -> Callable[[], list[list[int]]]:
    """Put the constraint in the request's params; compile it with the tokenization, in the worker thread (a
    schema that does not compile is a 400 before any byte is sent, and the engine loop finds it cached)."""
    if constraint is None:
        return tokenize
    req.params = dataclasses.replace(req.params, structured_outputs=constraint)

    def run() -> list[list[int]]:
        assert state.llm is not None
        state.llm.engine.grammars.compile(constraint)
        return tokenize()

    return run


def chat_plan(req: ChatRequest, template_source: str) -> tuple[ToolPlan, StructuredOutputsParams | None, str | None]:
    """The request's tool plan and the one constraint it runs under (a tool_choice's grammar wins over
    response_format), with the field a compile error is blamed on."""
    try:
        plan = plan_tools(template_source, req.tools, req.tool_choice, req.parallel_tool_calls)
    except ToolError as e:
        raise invalid(str(e), e.param) from None
    tool_constraint = plan.constraint()
    if tool_constraint is not None:
        return plan, tool_constraint, "tools"
    return plan, req.structured, req.structured_param


async def chat_completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    state.check_accepting()
    req: ChatRequest = parse_chat_request(await read_json(request), state.limits)  # type: ignore[arg-type]
    check_model(req.model, state)
    llm = state.llm
    assert llm is not None
    if llm.chat_template is None:
        raise invalid("this model has no chat template; use /v1/completions", "messages")
    rid, created = R.new_id("chatcmpl"), int(time.time())
    fmt = _logprob_formatter(request, req.logprobs)
    plan, constraint, structured_param = chat_plan(req, llm.chat_template.source)
    parsed = bool(plan.tools) or plan.reasoning or any(m.get("tool_calls") for m in req.messages)
    prompt_text = [""]

    def tokenize() -> list[list[int]]:
        prompt_text[0] = plan.render(llm.chat_template, req.messages, **req.template_kwargs)
        return [llm.encode_prompt(prompt_text[0])]

    def stream_fn(group: RequestGroup, prompts: list[list[int]], truncated: list[bool]) -> AsyncIterator[bytes]:
        info = StreamInfo(
            rid,
            created,
            state.model_name,
            req.include_usage,
            fmt,
            len(prompts[0]),
            _truncated(req, truncated),
            (lambda: plan.parser(prompt_text[0])) if parsed else None,
        )
        return chat_events(group, info)

    def body_fn(outputs: list[RequestOutput], prompts: list[list[int]], truncated: list[bool]) -> dict[str, Any]:
        return R.chat_response(
            rid,
            created,
            state.model_name,
            outputs[0].outputs,
            len(prompts[0]),
            fmt,
            outputs[0].num_cached_tokens,
            (lambda text: plan.parse(text, prompt_text[0])) if parsed else None,
        )

    return await generate(
        request,
        req,
        rid,
        1,
        with_constraint(state, req, constraint, tokenize),
        "messages",
        stream_fn,
        body_fn,
        structured_param,
    )


async def completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    state.check_accepting()
    req: CompletionRequest = parse_completion_request(await read_json(request), state.limits)  # type: ignore
    check_model(req.model, state)
    llm = state.llm
    assert llm is not None
    rid, created = R.new_id("cmpl"), int(time.time())
    fmt = _logprob_formatter(request, req.logprobs is not None)
    n = req.params.n

    def echoer(prompts: list[list[int]], truncated: list[bool]) -> Callable[[int], str]:
        def echo(i: int) -> str:  # the prompt as given, or what was kept of it
            p = req.prompts[i]
            return p if isinstance(p, str) and not truncated[i] else llm.tokenizer.decode(prompts[i])

        return echo

    def stream_fn(group: RequestGroup, prompts: list[list[int]], truncated: list[bool]) -> AsyncIterator[bytes]:
        info = StreamInfo(
            rid, created, state.model_name, req.include_usage, fmt, sum(map(len, prompts)), _truncated(req, truncated)
        )
        return completion_events(group, info, echoer(prompts, truncated) if req.echo else None)

    def body_fn(outputs: list[RequestOutput], prompts: list[list[int]], truncated: list[bool]) -> dict[str, Any]:
        echo = echoer(prompts, truncated)
        choices = []
        for i, out in enumerate(outputs):
            prefix = echo(i) if req.echo else ""
            for o in out.outputs:
                lp = fmt.legacy(o.logprobs or [], len(prefix)) if fmt is not None else None
                choices.append(R.completion_choice(i * n + o.index, prefix + o.text, o.finish_reason, lp))
        used = R.usage(
            sum(map(len, prompts)),
            sum(len(o.token_ids) for out in outputs for o in out.outputs),
            sum(out.num_cached_tokens for out in outputs),
        )
        return R.completion_body(rid, created, state.model_name, choices, used)

    tokenize = with_constraint(state, req, req.structured, lambda: [llm.encode_prompt(p) for p in req.prompts])
    return await generate(
        request, req, rid, len(req.prompts), tokenize, "prompt", stream_fn, body_fn, req.structured_param
    )
