"""HTTP errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, never a traceback; on the
Anthropic Messages routes in Anthropic's: ``{"type": "error", "error": {"type", "message"}}``, the type chosen by
the status as Anthropic's API does."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

MAX_VALUE_REPR = 80  # characters of a user-supplied value quoted back in an error message


def short_repr(value: Any, limit: int = MAX_VALUE_REPR) -> str:
    """``repr(value)`` cut to ``limit`` characters, so error bodies stay small whatever the client sent."""
    try:
        text = (
            repr(value)
            if not isinstance(value, (list, dict)) or len(value) <= 8
            else f"<{type(value).__name__} of {len(value)} items>"
        )
    except (RecursionError, ValueError):  # deeply nested values; ints too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class APIError(Exception):
    """An error answered to the client: HTTP status, OpenAI error type, the offending field, a code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}
        }

    def anthropic_body(self) -> dict[str, Any]:
        kind = ANTHROPIC_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "api_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def response(self, anthropic: bool = False) -> JSONResponse:
        return JSONResponse(
            self.anthropic_body() if anthropic else self.body(), status_code=self.status, headers=self.headers
        )


ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    """Whether errors on `path` (relative to the root path) take Anthropic's shape."""
    return path.rstrip("/") in ANTHROPIC_PATHS


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 invalid_request_error naming ``param``."""
    return APIError(400, message, param=param, code=code)


def unavailable(message: str, retry_after: int = 1, code: str | int | None = None) -> APIError:
    """A 503 that tells the client when to retry."""
    return APIError(
        503,
        message,
        type="unavailable_error",
        code=code if code is not None else 503,
        headers={"Retry-After": str(retry_after)},
    )


def loading_response() -> JSONResponse:
    """llama.cpp's exact answer while the model loads."""
    return JSONResponse(
        {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
        status_code=503,
        headers={"Retry-After": "1"},
    )


def json_error(
    status: int, message: str, type: str, code: str | int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return APIError(status, message, type=type, code=code, headers=headers).response()
