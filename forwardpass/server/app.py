"""The ASGI app: routes, error handlers and middleware. ``create_app(config, state)`` builds it.

Routes: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, POST /v1/responses (GET and
DELETE /v1/responses/{id}), POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models, GET /health,
GET /metrics, GET /slots, POST /tokenize, POST /detokenize, and the web chat page (GET /, /chat.js, /chat.css).
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import fields
from .anthropic_api import count_tokens, messages
from .config import ServerConfig
from .embeddings import embeddings
from .errors import APIError, invalid, is_anthropic_path, loading_response
from .metrics import CONTENT_TYPE, ServerMetrics
from .openai_routes import chat_completions, completions, read_json
from .protocol import parse_messages
from .responses_api import ResponseStore, create_response, delete_response, get_response
from .security import AuthMiddleware, BodyLimitMiddleware, GuardMiddleware, is_loopback
from .slots import describe as describe_slots
from .state import ServerState

logger = logging.getLogger(__name__)

_STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _middleware(config: ServerConfig) -> list[Middleware]:
    allowed_hosts = None
    if is_loopback(config.host):
        allowed_hosts = frozenset({"localhost", "127.0.0.1", "[::1]", config.host.lower()})
    stack = [Middleware(GuardMiddleware, allowed_hosts=allowed_hosts)]
    if config.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_credentials=False,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version"],
                max_age=600,
            )
        )
    stack.append(Middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes))
    stack.append(Middleware(AuthMiddleware, keys=config.api_keys))
    return stack


def _install_error_handlers(app: FastAPI) -> None:
    def anthropic(request: Request) -> bool:
        return is_anthropic_path(AuthMiddleware.relative_path(request.scope))

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response(anthropic(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind, headers=getattr(exc, "headers", None)).response(
            anthropic(request)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s %r", request.method, request.url.path)
        return APIError(500, "internal server error", type="server_error").response(anthropic(request))


def create_app(config: ServerConfig, state: ServerState | None = None) -> FastAPI:
    """The app for ``config``; ``state`` (model, engine, counters) is created if not given."""
    state = state or ServerState(config)
    app = FastAPI(title="forwardpass", docs_url=None, redoc_url=None, openapi_url=None, middleware=_middleware(config))
    app.state.server = state
    app.state.metrics = ServerMetrics(state)
    _install_error_handlers(app)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/embeddings", embeddings, methods=["POST"])
    app.state.response_store = ResponseStore()
    app.add_api_route("/v1/responses", create_response, methods=["POST"])
    app.add_api_route("/v1/responses/{response_id}", get_response, methods=["GET"])
    app.add_api_route("/v1/responses/{response_id}", delete_response, methods=["DELETE"])
    app.add_api_route("/v1/messages", messages, methods=["POST"])
    app.add_api_route("/v1/messages/count_tokens", count_tokens, methods=["POST"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/slots", slots, methods=["GET"])
    app.add_api_route("/tokenize", tokenize, methods=["POST"])
    app.add_api_route("/detokenize", detokenize, methods=["POST"])
    for path, name in (("/", "index.html"), ("/chat.js", "chat.js"), ("/chat.css", "chat.css")):
        app.add_api_route(path, _static_route(name), methods=["GET"])
    return app


def _static_route(name: str) -> Any:
    content = resources.files("forwardpass.server").joinpath("static", name).read_bytes()

    async def static_file() -> Response:
        return Response(content, media_type=_STATIC_TYPES[name], headers=_PAGE_HEADERS)

    static_file.__name__ = f"static_{name.replace('.', '_')}"
    return static_file


async def health(request: Request) -> Response:
    """200 ``{"status": "ok"}``, or 503 while loading, shutting down, or when the engine is dead or stalled."""
    state = request.app.state.server
    problem = state.health_problem()
    replicas = getattr(state.engine, "replicas", None)  # engine replicas behind this ingress (`ray/`)
    if problem is None and replicas is not None:
        shown = [
            {"replica": r.index, "healthy": r.healthy, "in_flight": r.in_flight, "pid": r.pid, "error": r.last_error}
            for r in replicas()
        ]
        status = "ok" if all(r["healthy"] for r in shown) else "degraded"
        return JSONResponse({"status": status, "replicas": shown})
    if problem is None:
        return JSONResponse({"status": "ok"})
    if problem == "Loading model":
        return loading_response()
    return JSONResponse(
        {"error": {"code": 503, "message": problem, "type": "unavailable_error"}},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def models(request: Request) -> Response:
    state: ServerState = request.app.state.server
    card = {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "forwardpass",
        "max_model_len": state.limits.n_ctx if state.limits else None,
    }
    return JSONResponse({"object": "list", "data": [card]})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


async def slots(request: Request) -> Response:
    """The engine's slots (``max_num_seqs``), each idle or processing a sequence; see ``slots.py``."""
    state = _ready_state(request)
    assert state.engine is not None and state.limits is not None
    table = describe_slots(state.slots.update(state.engine.stats().running_seqs), state.limits.n_ctx)
    fail = request.query_params.get("fail_on_no_slot", "")
    if fail not in ("", "0", "false") and all(slot["is_processing"] for slot in table):
        raise APIError(
            503, "no slot available", type="unavailable_error", code="no_slot_available", headers={"Retry-After": "1"}
        )
    return JSONResponse(table)


def _ready_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    if not state.ready:
        raise APIError(503, "Loading model", type="unavailable_error", code=503, headers={"Retry-After": "1"})
    return state


async def tokenize(request: Request) -> Response:
    """``{"content"|"prompt": text, "add_special": bool}`` or ``{"messages": [...]}`` -> ``{"tokens": [...]}``."""
    state = _ready_state(request)
    body = await read_json(request)
    llm = state.llm
    assert llm is not None and state.limits is not None
    if body.get("messages") is not None:
        messages = parse_messages(body)
        if llm.chat_template is None:
            raise invalid("this model has no chat template", "messages")
        add_gen = fields.boolean(body, "add_generation_prompt", True)
        work = lambda: llm.chat_prompt(messages, add_generation_prompt=add_gen)  # noqa: E731
    else:
        key = "content" if "content" in body else "prompt"
        text = body.get(key)
        if not isinstance(text, str):
            raise invalid("send 'content' (a string) or 'messages'", key)
        add_special = fields.boolean(body, "add_special", fields.boolean(body, "add_special_tokens", False))
        work = lambda: llm.tokenizer.encode(text, add_bos=add_special, special=True)  # noqa: E731
    try:
        ids = await run_in_threadpool(work)
    except ValueError as e:  # ChatTemplateError, TokenizerError
        raise APIError(400, str(e)[:300], param=None) from None
    out: dict[str, Any] = {"tokens": ids, "count": len(ids), "max_model_len": state.limits.n_ctx}
    if fields.boolean(body, "with_pieces", False):
        out["tokens"] = [{"id": t, "piece": llm.tokenizer.decode([t])} for t in ids]
    return JSONResponse(out)


async def detokenize(request: Request) -> Response:
    """``{"tokens": [ids]}`` -> ``{"content": text, "prompt": text}`` (llama.cpp's and vLLM's key)."""
    state = _ready_state(request)
    body = await read_json(request)
    tokens = body.get("tokens")
    assert state.llm is not None and state.limits is not None
    if not isinstance(tokens, list):
        raise invalid("tokens must be a list of token ids", "tokens")
    ids = fields.token_ids(tokens, "tokens", state.limits.vocab_size) if tokens else []
    text = await run_in_threadpool(state.llm.tokenizer.decode, ids)
    return JSONResponse({"content": text, "prompt": text})
