"""A fix for BentoML's request deadline (1.4.39 and 1.4.40), applied by the service in each worker.

BentoML wraps every request in `TimeoutMiddleware`, which arms `loop.call_later(traffic.timeout,
...)` and never cancels it: each request leaves a timer behind for `traffic.timeout` seconds,
holding the request's future and context (its OpenTelemetry span included), about 20 objects.
At 1,000 requests/s and a 30 s timeout a worker carries 30,000 such timers; they reach the
collector's oldest generation, whose full passes then pause the worker for 60 to 135 ms (measured
here with a `gc.callbacks` probe: those pauses were most of the p99 at 64 connections).

The replacement keeps BentoML's behaviour (a 504 with BentoML's body when nothing has been sent
within the timeout; no deadline once the response has started) with `asyncio.timeout`, whose timer
is cancelled when the request ends, and without the extra task per request. `traffic.timeout`
cannot be switched off in BentoML's configuration, so the class itself is fixed.
"""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send


async def _deadline_until_response_starts(
    self: TimeoutMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """`TimeoutMiddleware.__call__`, with a timer that ends with the request."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    response_started = False
    try:
        async with asyncio.timeout(self.timeout) as deadline:

            async def send_lifting_deadline(message: Message) -> None:
                nonlocal response_started
                if not response_started:
                    response_started = True
                    deadline.reschedule(None)
                await send(message)

            await self.app(scope, receive, send_lifting_deadline)
    except TimeoutError:
        if response_started or not deadline.expired():
            raise
        body = {"error": f"Not able to process the request in {self.timeout} seconds"}
        await JSONResponse(body, status_code=504)(scope, receive, send)


def fix_timeout_middleware() -> None:
    """Replace BentoML's leaky `TimeoutMiddleware.__call__` (idempotent)."""
    TimeoutMiddleware.__call__ = _deadline_until_response_starts  # type: ignore[method-assign]
