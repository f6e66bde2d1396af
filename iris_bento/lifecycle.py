"""Stopping without losing requests: what the supervisor and each worker do on SIGTERM.

`bentoml serve` is a circus supervisor that owns the listening socket and hands it to its uvicorn
workers. Left alone, on SIGTERM the workers stop accepting at once and close their idle
keep-alive connections, while the supervisor keeps the socket listening until it exits: the
kernel goes on completing connections that nobody serves, and resets them when the supervisor
goes. Every client that sent a request in that window, or on an idle connection at the moment it
was closed, lost it. Here the stop happens in order instead, as Go's `http.Server.Shutdown` and
Envoy's drain do it:

1. For `shutdown.drain_s` each worker serves on, but `/readyz` answers 503 (a load balancer or a
   Kubernetes Service stops sending new connections) and every answer carries `Connection: close`
   (clients reconnect, and reach another instance once this one is out of rotation); except in
   the drain's last `QUIET_S`, when connections are kept, so that clients still sending stop
   opening new ones.
2. Then the supervisor closes the listening socket in the kernel, for every process that shares
   it (`close_listener_after`, a circus hook that `iris_bento.supervisor` adds): once the workers
   have accepted every connection queued on it, it shuts the socket down. Shutting down a socket
   resets the connections still queued, which is why the queue must be empty first, and why the
   quiet end of the drain lets it empty. From then on a new connection is refused at once, so a
   client or proxy retries elsewhere. Each worker stops accepting once it sees the socket closed,
   and closes every connection after its next answer again.
3. Requests in flight finish, bounded by `limits.request_timeout_s`; then the worker exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import uvicorn

log = logging.getLogger("iris_bento.lifecycle")

# The end of the drain in which connections are kept rather than closed after each answer.
QUIET_S: Final = 1.0
# After it stops accepting, a worker waits this long before uvicorn closes its idle connections,
# so that a connection accepted just before delivers its request and is answered.
SETTLE_S: Final = 0.5
# How often, and for how long at most, a draining worker looks for the closed socket.
_POLL_S: Final = 0.01
_MAX_WAIT_FOR_SUPERVISOR_S: Final = 1.0


@dataclass
class _WorkerState:
    draining: bool = False
    closing_connections: bool = False
    task: asyncio.Task[None] | None = None


_worker = _WorkerState()


def draining() -> bool:
    """Whether this worker has been told to stop: it is not ready."""
    return _worker.draining


def closing_connections() -> bool:
    """Whether this worker closes each connection after its answer, as it stops."""
    return _worker.closing_connections


def drain_on_sigterm(drain_s: float) -> bool:
    """In a uvicorn worker, while its application starts: on SIGTERM, drain before uvicorn's own
    shutdown. False where uvicorn does not own the signal (in-process tests, other servers)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if not isinstance(server, uvicorn.Server):
        return False
    loop = asyncio.get_running_loop()

    def on_sigterm(_signum: int, _frame: Any) -> None:
        loop.call_soon_threadsafe(_begin_drain, server, drain_s)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


def _begin_drain(server: uvicorn.Server, drain_s: float) -> None:
    if _worker.draining:
        return  # a second SIGTERM changes nothing
    _worker.draining = _worker.closing_connections = True
    log.warning("SIGTERM: draining", extra={"drain_s": drain_s})
    _worker.task = asyncio.create_task(_drain(server, drain_s))


async def _drain(server: uvicorn.Server, drain_s: float) -> None:
    await asyncio.sleep(max(drain_s - QUIET_S, 0))
    _worker.closing_connections = False
    await asyncio.sleep(min(drain_s, QUIET_S))
    await _wait_for_closed_listener(server)
    _worker.closing_connections = True
    for listener in server.servers:
        listener.close()
    await asyncio.sleep(SETTLE_S)
    log.info("drained: finishing requests in flight")
    server.handle_exit(signal.SIGTERM, None)


async def _wait_for_closed_listener(server: uvicorn.Server) -> None:
    """Until the supervisor has shut the shared socket down: a worker that stopped accepting
    first would leave the connections queued meanwhile to be reset. Bounded, for a worker
    stopped on its own."""
    sockets = [sock for listener in server.servers for sock in listener.sockets]
    for _ in range(int(_MAX_WAIT_FOR_SUPERVISOR_S / _POLL_S)):
        if not any(_is_listening(sock) for sock in sockets):
            return
        await asyncio.sleep(_POLL_S)


def _is_listening(sock: Any) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def close_listener_after(drain_s: float) -> Callable[..., bool]:
    """A circus `before_stop` hook for the supervisor's worker watcher: `drain_s` after the
    workers are told to stop, the listening socket closes."""

    def before_stop(arbiter: Any, **_: Any) -> bool:
        arbiter.loop.call_later(drain_s, _refuse_new_connections, arbiter)
        return True

    return before_stop


# Where `struct tcp_info` holds, for a listening socket, the length of its accept queue.
_TCP_INFO_ACCEPT_QUEUE: Final = 24
_MAX_WAIT_FOR_ACCEPTS_S: Final = 1.0


def _refuse_new_connections(arbiter: Any) -> None:
    listeners = list(arbiter.sockets.values())
    _shut_down_when_accepted(listeners, time.monotonic() + _MAX_WAIT_FOR_ACCEPTS_S, arbiter.loop)


def _accept_queue(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("@I", info, _TCP_INFO_ACCEPT_QUEUE)[0]


def _shut_down_when_accepted(listeners: list[socket.socket], deadline: float, loop: Any) -> None:
    """Shut the sockets down once the workers have accepted every queued connection."""
    with contextlib.suppress(OSError):
        if time.monotonic() < deadline and any(_accept_queue(sock) for sock in listeners):
            loop.call_later(_POLL_S, _shut_down_when_accepted, listeners, deadline, loop)
            return
    for sock in listeners:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    log.warning("listening socket closed: new connections are refused")
