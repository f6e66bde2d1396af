"""Bounds on what one connection may cost a worker before its request reaches the application.

uvicorn's httptools protocol accepts a request head of any size and waits for it forever: one
ever-growing header held 10 MiB of worker memory a second, and connections that sent half a head,
or nothing, stayed open until the worker ran out of file descriptors. No ASGI middleware can help,
since the application only sees a request once its head is complete, and BentoML gives no way to
choose uvicorn's protocol class. So the worker's protocol class is extended here, as nginx,
Envoy and HAProxy bound the same things:

- a head (request line and headers) over `max_head_bytes`, or with more than `max_headers`
  headers, gets 431 in the error contract;
- a head not complete within `head_timeout_s` of the connection's opening, or of its first byte
  on a kept-alive connection, gets 408; a connection that sent nothing is closed without a word;
- after such an answer the connection is half-closed and whatever the client still sends is
  discarded, for at most `LINGER_S`, so that the client reads the answer before the reset.

Idle keep-alive connections are already closed by uvicorn after its keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import uuid
from http import HTTPStatus
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from iris_bento.errors import error_body
from iris_bento.logs import RateLimitedWarning
from iris_bento.settings import ConnectionSettings

log = logging.getLogger("iris_bento.connections")

# How long a refused connection is kept half-closed, its input discarded.
LINGER_S: Final = 1.0
_UNLIMITED_OPEN_FILES: Final = 1 << 20


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads and a deadline for them."""

    settings: ClassVar[ConnectionSettings] = ConnectionSettings()
    _refusals: ClassVar[RateLimitedWarning] = RateLimitedWarning(log, "request head refused")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_head = True
        self._head_started = False
        self._head_bytes = 0
        self._head_deadline: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._awaiting_head:
            # Counted before parsing: httptools buffers a header until it ends, so a header
            # that never ends is only visible here.
            self._head_bytes += len(data)
            self._arm_head_deadline()
        super().data_received(data)
        if (
            self._awaiting_head
            and self._head_bytes > self.settings.max_head_bytes
            and not self._refused
            and not self.transport.is_closing()
        ):
            self._refuse(431, f"the request head exceeds {self.settings.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        if self._refused:
            return  # a request pipelined behind a refused one: never served
        super().on_message_begin()
        self._awaiting_head = self._head_started = True
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._awaiting_head = self._head_started = False
        self._head_bytes = 0
        self._disarm_head_deadline()
        limits = self.settings
        if len(self.headers) > limits.max_headers:
            self._refuse(431, f"the request has more than {limits.max_headers} headers")
            return
        head_bytes = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if head_bytes > limits.max_head_bytes:
            self._refuse(431, f"the request head exceeds {limits.max_head_bytes} bytes")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(
                self.settings.head_timeout_s, self._head_timed_out
            )

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self._refused:
            return
        if not self._head_started:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(
            408, f"the request head did not arrive within {self.settings.head_timeout_s:g} s"
        )

    def _refuse(self, status: int, details: str) -> None:
        """Answer in the error contract without reaching the application, then close. Behind a
        request still being answered (pipelined), that answer goes out and the connection then
        closes: an answer of ours first would be taken for it."""
        self._refused = True
        self._disarm_head_deadline()
        self._awaiting_head = False
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            self._refusals.warn(status=status, details=details, client=self.client)
            return
        request_id = uuid.uuid4().hex
        body = error_body(status, details)
        self.transport.write(
            b"".join(
                [
                    f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode(),
                    b"content-type: application/json\r\n",
                    f"content-length: {len(body)}\r\n".encode(),
                    b"connection: close\r\n",
                    f"x-request-id: {request_id}\r\n\r\n".encode(),
                    body,
                ]
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
        self._refusals.warn(
            status=status, details=details, request_id=request_id, client=self.client
        )


def _guarded_protocol(cls: type, *_: Any, **__: Any) -> Any:
    return object.__new__(GuardedHttpToolsProtocol if cls is HttpToolsProtocol else cls)


def guard_connections(settings: ConnectionSettings) -> None:
    """Make uvicorn create `GuardedHttpToolsProtocol`s for the connections it accepts from now
    on. uvicorn resolved its protocol class before the application started, so the class itself
    is redirected; a worker calls this while the service starts, before it listens."""
    if AutoHTTPProtocol is not HttpToolsProtocol:
        log.warning("request heads are not bounded: uvicorn does not use httptools")
        return
    GuardedHttpToolsProtocol.settings = settings
    HttpToolsProtocol.__new__ = staticmethod(_guarded_protocol)  # type: ignore[assignment]


def raise_open_file_limit() -> int:
    """Lift this worker's soft limit on open files to the hard one, as Go and nginx
    (`worker_rlimit_nofile`) do: each connection holds a descriptor, and many container runtimes
    start processes at a soft limit of 1,024. An unlimited hard limit gives 1,048,576, Linux's
    default ceiling. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, _UNLIMITED_OPEN_FILES)
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target
