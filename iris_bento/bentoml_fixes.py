"""Fixes of BentoML 1.4.39 and 1.4.40, applied by the service in each worker: its request deadline,
the labels of its request metrics, and spans that nothing exports. Each has a test that fails once
BentoML ships its own fix.

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
from collections.abc import Iterable, Iterator
from typing import Any, Final

from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route, Router, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iris_bento.settings import tracing_exporter


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


# BentoML's request metrics label every series with the raw request path, in its outermost
# middleware, before any of the project's code runs: each made-up path, with or without a key,
# added about 20 series and 4 KB to /metrics and to the Prometheus files of every worker (8 MB and
# a 2.3 s scrape after 2,000 such requests). The fix hands BentoML's middleware the route
# template instead, and one value for every path that matches no route, as Ray Serve does; the
# application below still sees the real path. BentoML's middleware is kept whole rather than
# replaced, so its metric names, labels and buckets stay exactly BentoML's.
UNMATCHED_ROUTE: Final = "unmatched"
_ORIGINAL_SCOPE: Final = "iris.original_scope"
_bentoml_metrics_call = RunnerTrafficMetricsMiddleware.__call__


class RouteLabels:
    """The route template a request path belongs to, from the application's own router."""

    def __init__(self, router: Router) -> None:
        templates = list(_route_templates(router.routes))
        self._exact = frozenset(template for template in templates if "{" not in template)
        self._patterns = [
            (compile_path(template)[0], template) for template in templates if "{" in template
        ]

    def __call__(self, path: str) -> str:
        if path in self._exact:
            return path
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return UNMATCHED_ROUTE


def _route_templates(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[str]:
    for route in routes:
        if isinstance(route, Mount):
            if route.routes:
                yield from _route_templates(route.routes, prefix + route.path)
            else:  # an app without routes of its own (static files) answers any path below
                yield f"{prefix}{route.path}/{{path:path}}"
        elif isinstance(route, Route):
            yield prefix + route.path


def _router_below(app: Any) -> Router:
    """The router at the end of a middleware chain (each middleware keeps the next as `.app`)."""
    while not isinstance(app, Router):
        app = app.app
    return app


class _WithOriginalScope:
    """Passes the application the scope BentoML's middleware was given before relabelling."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope.get(_ORIGINAL_SCOPE, scope), receive, send)


async def _metrics_labelled_by_route(
    self: RunnerTrafficMetricsMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """`RunnerTrafficMetricsMiddleware.__call__`, seeing the route template as the path."""
    if scope["type"] in ("http", "websocket"):
        labels: RouteLabels | None = getattr(self, "route_labels", None)
        if labels is None:
            labels = self.route_labels = RouteLabels(_router_below(self.app))
            self.app = _WithOriginalScope(self.app)
        label = labels(scope["path"])
        if label != scope["path"]:
            scope = {**scope, "path": label, _ORIGINAL_SCOPE: scope}
    await _bentoml_metrics_call(self, scope, receive, send)


def label_metrics_by_route() -> None:
    """Make BentoML's request metrics label by route template (idempotent)."""
    RunnerTrafficMetricsMiddleware.__call__ = _metrics_labelled_by_route  # type: ignore[method-assign]


# BentoML puts OpenTelemetry's middleware in front of every request, and its sampler records spans
# even when no exporter is configured (`Decision.RECORD_ONLY`): four SDK spans a request that
# nobody ever sees, about 40% of a `/predict`'s CPU. Its `tracing.excluded_urls` setting can skip
# paths, but it cannot say "only when something exports". With the fix, the middleware passes
# requests straight on unless `tracing.exporter_type` is set; once it is, every request is traced
# as BentoML would, `excluded_urls` included.
_opentelemetry_call = OpenTelemetryMiddleware.__call__


async def _traced_only_when_exported(
    self: OpenTelemetryMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """`OpenTelemetryMiddleware.__call__`, skipped while no exporter is configured."""
    exported: bool | None = getattr(self, "exported", None)
    if exported is None:
        exported = self.exported = tracing_exporter() is not None
    if exported:
        await _opentelemetry_call(self, scope, receive, send)
    else:
        await self.app(scope, receive, send)


def trace_only_when_exported() -> None:
    """Make BentoML's tracing middleware cost nothing without an exporter (idempotent)."""
    OpenTelemetryMiddleware.__call__ = _traced_only_when_exported  # type: ignore[method-assign]
