"""The error contract: every error is `{"error": title, "code": status, "details": ...}`.

A tiny hierarchy for the errors the project raises, and one renderer used for them, for the
auth middleware's 401s and for rewriting the errors that BentoML or Starlette produce themselves.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, ParamSpec, TypeVar

from starlette.responses import Response

P = ParamSpec("P")
R = TypeVar("R")

# Titles that read better than the bare HTTP reason phrases.
_TITLES: dict[int, str] = {
    400: "invalid input",
    401: "unauthorized",
    413: "request body too large",
    415: "unsupported media type",
    429: "too many requests",
    500: "internal server error",
    503: "service unavailable",
    504: "timed out",
}


def title_for(status: int) -> str:
    """A short, lower-case title for any status code."""
    if status in _TITLES:
        return _TITLES[status]
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def error_body(status: int, details: Any) -> bytes:
    """The JSON body of an error response."""
    payload = {"error": title_for(status), "code": status, "details": details}
    return json.dumps(payload, separators=(",", ":")).encode()


def error_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers every error answer carries."""
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


def is_error_body(body: bytes) -> bool:
    """Whether a body already follows the error contract (so it is passed through as it is)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, Mapping) and payload.keys() == {"error", "code", "details"}


class ApiError(Exception):
    """An error the client can act on; its status and details reach the client as they are."""

    status: int = 500
    # Extra response headers, lower-case (a 429's Retry-After, for one).
    headers: Mapping[str, str] = {}  # replaced per error, never mutated

    def __init__(self, details: Any) -> None:
        super().__init__(details)
        self.details = details

    def body(self) -> bytes:
        return error_body(self.status, self.details)


class InvalidInput(ApiError):
    """A request the schema refuses; `details` lists `{"field": ..., "message": ...}`."""

    status = 400


class NotFound(ApiError):
    """No such model, or no such version of it."""

    status = 404


class NotReady(ApiError):
    """The worker takes no new work: it is draining."""

    status = 503


class Overloaded(ApiError):
    """The worker's queue is full: retry later, or elsewhere."""

    status = 503


class TimedOut(ApiError):
    """The model did not answer in time."""

    status = 504


def renders_api_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | Response]]:
    """Turns the project's own errors into contract responses; anything else stays a 500."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        try:
            return await method(*args, **kwargs)
        except ApiError as error:
            return Response(
                error.body(),
                status_code=error.status,
                headers=error.headers,
                media_type="application/json",
            )

    return wrapper
