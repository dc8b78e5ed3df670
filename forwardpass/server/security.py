"""ASGI middleware that guards every route: header and Host checks, body size, API keys.

Order (outermost first): ``GuardMiddleware`` (header count, Host header when bound to loopback), CORS (only
with ``--cors-origin``), ``BodyLimitMiddleware``, ``AuthMiddleware``. Auth is deny-by-default: only the exact
paths in ``PUBLIC_PATHS`` (GET/HEAD) are open, so a new route, an unknown path or a path trick such as
``//v1/...`` or ``/v1/%2e%2e/...`` needs the key too.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, is_anthropic_path

logger = logging.getLogger(__name__)

# The web chat page is public: it holds no data, and its API calls carry the key the user types in.
PUBLIC_PATHS = frozenset({"/health", "/", "/chat.js", "/chat.css"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
DRAIN_LIMIT = 16 * 1024 * 1024  # an oversize body up to this size is read and dropped, so the 413 arrives


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _error(
    status: int,
    message: str,
    type: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    scope: Scope | None = None,
) -> JSONResponse:
    anthropic = scope is not None and is_anthropic_path(AuthMiddleware.relative_path(scope))
    return APIError(status, message, type=type, code=code, headers=headers).response(anthropic)


class GuardMiddleware:
    """Refuse more than 100 headers or 16 KiB of them (431; h11 only bounds a head that arrives in pieces), and
    a foreign Host header when bound to loopback (403: DNS rebinding would otherwise let any web page reach the
    API)."""

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
            return await _error(
                431,
                f"request headers too large (at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes)",
                "invalid_request_error",
                "request_header_fields_too_large",
                scope=scope,
            )(scope, receive, send)
        if self.allowed_hosts is not None:
            host = _header(scope, b"host")
            if host is not None and self._hostname(host) not in self.allowed_hosts:
                logger.warning("refused request with Host %r", host[:100])
                return await _error(
                    403,
                    "forbidden Host header: this server only answers to its loopback names",
                    "permission_error",
                    "forbidden_host",
                    scope=scope,
                )(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _hostname(host: bytes) -> str:
        text = host.decode("latin-1").strip().lower()
        if text.startswith("["):  # [::1]:8080
            return text[: text.find("]") + 1] if "]" in text else text
        return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class _BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes", code="request_too_large")


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: at once from Content-Length, else by counting what arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                return await _error(400, "invalid Content-Length", "invalid_request_error", scope=scope)(
                    scope, receive, send
                )
            if int(declared) > self.max_bytes:
                await _drain(receive, int(declared))
                anthropic = is_anthropic_path(AuthMiddleware.relative_path(scope))
                return await _BodyTooLarge(self.max_bytes).response(anthropic)(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_LIMIT - received)
                    raise _BodyTooLarge(self.max_bytes)  # answered by the app's APIError handler
            return message

        await self.app(scope, limited, send)


async def _drain(receive: Receive, limit: int) -> None:
    """Read and drop up to ``limit`` body bytes, so that the client sees our answer instead of a reset."""
    total = 0
    while total <= min(limit, DRAIN_LIMIT):
        message = await receive()
        if message["type"] != "http.request":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class AuthMiddleware:
    """``Authorization: Bearer KEY`` (or Anthropic's ``x-api-key: KEY``) on every path but ``PUBLIC_PATHS``; keys
    compared in constant time."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], public_paths: frozenset[str] = PUBLIC_PATHS) -> None:
        self.app = app
        self.keys = [k.encode("utf-8") for k in keys]
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD") and self.relative_path(scope) in self.public_paths:
            return await self.app(scope, receive, send)
        if not self._authorized(_header(scope, b"authorization"), _header(scope, b"x-api-key")):
            return await _error(
                401,
                "invalid or missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                "authentication_error",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
                scope,
            )(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def relative_path(scope: Scope) -> str:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        return path[len(root) :] if root and path.startswith(root) else path

    def _authorized(self, header: bytes | None, x_api_key: bytes | None) -> bool:
        """A key as ``Bearer`` in Authorization, or in x-api-key (Anthropic's clients): either one matching."""
        tokens = [x_api_key.strip()] if x_api_key is not None else []
        if header is not None:
            scheme, _, token = header.partition(b" ")
            if scheme.lower() == b"bearer":
                tokens.append(token.strip())
        ok = False
        for token in tokens:
            for key in self.keys:  # no early exit: the time taken does not depend on which key matched
                ok |= hmac.compare_digest(token, key)
        return ok
