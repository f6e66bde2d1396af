"""The outermost project middleware: request ids, request limits, the error contract, access logs,
and the life of keep-alive connections.

BentoML and Starlette answer some errors themselves (validation, unknown routes and methods,
unhandled exceptions), each in its own shape. This middleware rewrites every error response that
does not already follow the contract, so clients see one shape and never a traceback, a file path
or a library version; the detail goes to the log instead.

It also ends keep-alive connections after `connections.mean_requests` requests on average. The
workers share one listening socket and a worker accepts every connection waiting when it wakes,
so clients that open their connections together (a pool, a proxy, a load generator) can land
mostly on one worker and stay there, leaving the other idle; behind a Kubernetes Service the same
happens across pods. Each answer closes its connection with probability 1/N (`Connection:
close`), so connections come back spread out, and never all at once as a fixed count would make
them. Measured with wrk's 64 connections in 10 runs each: the busier worker held 40 to 62 of them
without this, 34 to 44 with it; throughput and p99 stayed within the runs' noise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Final

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iris_bento.auth import is_public
from iris_bento.client_metrics import client_request
from iris_bento.clients import client_of
from iris_bento.errors import error_body, error_headers, is_error_body
from iris_bento.lifecycle import closing_connections
from iris_bento.schemas import validation_details
from iris_bento.settings import ConnectionSettings, LimitSettings, project_settings

log = logging.getLogger("iris_bento.access")

REQUEST_ID_HEADER: Final = b"x-request-id"
CLOSE_CONNECTION: Final = (b"connection", b"close")
# 429 and 503 say when to try again: a second, by then the queue has moved or the load is spread.
RETRY_AFTER: Final = (b"retry-after", b"1")
_RETRY_STATUSES: Final = frozenset({429, 503})
# A client's request id is echoed when it is short and printable; otherwise a new one is made.
_VALID_REQUEST_ID: Final = re.compile(rb"[\x21-\x7e]{1,128}")
_JSON_MEDIA_TYPE: Final = re.compile(rb"application/([\w.+-]+\+)?json")
SEND_JSON: Final = "send the body as JSON with Content-Type: application/json"
SEND_UNENCODED: Final = "send the body without a Content-Encoding: it is read as plain JSON"
V2_PREFIX: Final = "/v2/"
CLIENT_CLOSED_REQUEST: Final = 499


def too_large(limit: int) -> str:
    return f"the body exceeds the limit of {limit} bytes"


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


def _header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None


def has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    length = _header(headers, b"content-length")
    return length not in (None, b"0") or _header(headers, b"transfer-encoding") is not None


def contract_details(status: int, body: bytes, request_id: str) -> tuple[int, Any]:
    """Status and details for an error response produced outside the project's code."""
    if status >= 500:
        return status, f"the server log has the detail; request id {request_id}"
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("detail"), list):
        # BentoML's rendering of a pydantic ValidationError: keep field and message, drop the
        # documentation URL (it names the library version).
        return 400, validation_details(payload["detail"])
    if status == 404:
        return status, "no endpoint at this path"
    if status == 405:
        return status, "this endpoint does not accept this method"
    if status == 415:
        return status, SEND_JSON
    if isinstance(payload, list | dict):
        return status, None  # a framework's own JSON shape: its wording is not ours to pass on
    text = body.decode(errors="replace").strip()
    return status, text if 0 < len(text) <= 200 else None


class _Exchange:
    """The response side of one request: adds the request id, rewrites non-contract errors."""

    def __init__(
        self, send: Send, request_id: str, max_body_bytes: int, close_connection: bool
    ) -> None:
        self._send = send
        self.request_id = request_id
        self.max_body_bytes = max_body_bytes
        self._request_id_header = (REQUEST_ID_HEADER, request_id.encode())
        self.close_connection = close_connection
        # True while the request still has body to come: an answer sent before all of it was
        # read (a 401, 413, 415, 429, 504) closes the connection, since what follows on it is
        # the rest of this body, not the next request.
        self.body_pending = False
        self.status = 0
        self.body_too_large = False
        self._held: Message | None = None
        self._held_body = bytearray()

    @property
    def started(self) -> bool:
        return self.status != 0

    def _headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if self.close_connection or self.body_pending:
            return [*headers, self._request_id_header, CLOSE_CONNECTION]
        return [*headers, self._request_id_header]

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.status >= 400:
                self._held = message
                return
            message["headers"] = self._headers(message.get("headers", ()))
            await self._send(message)
        elif message["type"] == "http.response.body" and self._held is not None:
            self._held_body += message.get("body", b"")
            if not message.get("more_body", False):
                await self._send_held(self._held)
        else:
            await self._send(message)

    def _too_large_body(self) -> bytes:
        return error_body(413, too_large(self.max_body_bytes))

    async def send_failure(self) -> None:
        """The answer when the app raised: 413 if it was reading an oversized body, else 500."""
        if self.body_too_large:
            await self.send_error_body(413, self._too_large_body())
        else:
            status, details = contract_details(500, b"", self.request_id)
            await self.send_error_body(status, error_body(status, details))

    async def _send_held(self, held: Message) -> None:
        body = bytes(self._held_body)
        status = held["status"]
        if self.body_too_large:
            status, body = 413, self._too_large_body()
        elif not is_error_body(body):
            status, details = contract_details(status, body, self.request_id)
            body = error_body(status, details)
        kept = [
            (name, value)
            for name, value in held.get("headers", ())
            if name not in (b"content-length", b"content-type")
        ]
        await self.send_error_body(status, body, kept)

    async def send_error_body(
        self, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        self.status = status
        headers = [*headers, *error_headers(body)]
        if status in _RETRY_STATUSES and _header(headers, RETRY_AFTER[0]) is None:
            headers.append(RETRY_AFTER)
        await self._send(
            {"type": "http.response.start", "status": status, "headers": self._headers(headers)}
        )
        await self._send({"type": "http.response.body", "body": body})


class RequestMiddleware:
    """Request id, limits (413, 415, 429), the error contract, one access-log line a request,
    and keep-alive connections that end after `connections.mean_requests` requests on average."""

    def __init__(
        self,
        app: ASGIApp,
        limits: LimitSettings | None = None,
        connections: ConnectionSettings | None = None,
        chance: random.Random | None = None,
    ) -> None:
        self.app = app
        self._limits = limits if limits is not None else project_settings().limits
        if connections is None:
            connections = project_settings().connections
        mean_requests = connections.mean_requests
        self._close_probability = 1 / mean_requests if mean_requests else 0.0
        self._chance = chance or random.Random()  # noqa: S311 (spreading load, not a secret)
        self._in_flight = 0

    def _rejection(self, scope: Scope, body_expected: bool) -> tuple[int, str] | None:
        """Checks that need only the request line and headers."""
        headers = scope["headers"]
        if self._in_flight >= self._limits.max_in_flight and not is_public(scope["path"]):
            return 429, f"this worker is at its limit of {self._limits.max_in_flight} requests"
        length = _header(headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body_bytes:
            return 413, too_large(self._limits.max_body_bytes)
        if body_expected:
            # A compressed body would be read as broken JSON; RFC 9110 asks for a 415.
            encoding = _header(headers, b"content-encoding")
            if encoding is not None and encoding.strip().lower() != b"identity":
                return 415, SEND_UNENCODED
            media_type = _header(headers, b"content-type")
            # V2 clients (tritonclient among them) send their JSON without a Content-Type.
            if media_type is None and scope["path"].startswith(V2_PREFIX):
                return None
            if not _JSON_MEDIA_TYPE.fullmatch((media_type or b"").split(b";")[0].strip().lower()):
                return 415, SEND_JSON
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        exchange = _Exchange(
            send,
            request_id_of(scope["headers"]),
            self._limits.max_body_bytes,
            close_connection=closing_connections()
            or self._chance.random() < self._close_probability,
        )
        body_expected = has_body(scope["headers"])
        exchange.body_pending = body_expected
        received = 0

        async def receive_within_limit() -> Message:
            """Counts body bytes; past the limit the app sees a disconnect and the client a 413."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                exchange.body_pending = message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self._limits.max_body_bytes:
                    exchange.body_too_large = True
                    return {"type": "http.disconnect"}
            return message

        try:
            rejection = self._rejection(scope, body_expected)
            if rejection is not None:
                status, details = rejection
                await exchange.send_error_body(status, error_body(status, details))
                return
            self._in_flight += 1
            try:
                async with asyncio.timeout(self._limits.request_timeout_s):
                    await self.app(scope, receive_within_limit, exchange.send)
            except TimeoutError:
                # Before BentoML's own traffic timeout answers, outside the contract.
                if not exchange.started:
                    details = f"no answer within {self._limits.request_timeout_s:g} s"
                    await exchange.send_error_body(504, error_body(504, details))
            finally:
                self._in_flight -= 1
        except ClientDisconnect:
            # Its body was cut off: by the size limit (413), or by a client that left, which
            # gets no answer; the access line says 499, as nginx logs a client gone.
            if not exchange.started and exchange.body_too_large:
                await exchange.send_failure()
            elif not exchange.started:
                exchange.status = CLIENT_CLOSED_REQUEST
        except Exception:
            if not exchange.body_too_large:
                log.exception("unhandled error", extra={"request_id": exchange.request_id})
            if not exchange.started:
                await exchange.send_failure()
        finally:
            # Set by the auth middleware for a valid key: its name, never the key.
            client = client_of(scope)
            if client is not None:
                client_request(client.name, exchange.status)
            log.info(
                "request",
                extra={
                    "request_id": exchange.request_id,
                    "client": client.name if client is not None else None,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": exchange.status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
