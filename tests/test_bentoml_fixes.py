"""The fix of BentoML's request deadline, on its own middleware class with a tiny app."""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from helpers import asgi_request
from starlette.applications import Starlette
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iris_bento import bentoml_fixes
from iris_bento.bentoml_fixes import (
    UNMATCHED_ROUTE,
    RouteLabels,
    _deadline_until_response_starts,
    fix_timeout_middleware,
)

BENTOML_CALL = TimeoutMiddleware.__call__


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def stall(scope: Scope, receive: Receive, send: Send) -> None:
    await asyncio.sleep(5)


async def slow_stream(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.2)
    await send({"type": "http.response.body", "body": b"late but whole"})


async def own_timeout_error(scope: Scope, receive: Receive, send: Send) -> None:
    raise TimeoutError("the app's own")


class BentoMLTimeoutMiddleware(TimeoutMiddleware):
    """BentoML's own middleware, as shipped: its `__call__` from before the fix."""

    __call__ = BENTOML_CALL


def live_timers_after_one_request(middleware: TimeoutMiddleware) -> int:
    """Timers still armed on the loop once a request has been answered."""

    async def scenario() -> int:
        assert (await asgi_request(middleware))[0] == 200
        loop = asyncio.get_running_loop()
        return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]

    return asyncio.run(scenario())


def fixed(app: ASGIApp, timeout: float) -> TimeoutMiddleware:
    fix_timeout_middleware()
    return TimeoutMiddleware(app, timeout=timeout)


def test_bentoml_still_leaves_a_timer_per_request() -> None:
    """When this fails, BentoML has fixed its middleware: drop iris_bento/bentoml_fixes.py."""
    assert BENTOML_CALL is not _deadline_until_response_starts
    assert live_timers_after_one_request(BentoMLTimeoutMiddleware(answer, timeout=30)) == 1


def test_fixed_middleware_leaves_no_timer_behind() -> None:
    assert live_timers_after_one_request(fixed(answer, timeout=30)) == 0


def test_fix_is_what_bentoml_calls() -> None:
    fix_timeout_middleware()
    assert TimeoutMiddleware.__call__ is _deadline_until_response_starts


def test_nothing_sent_within_the_timeout_is_bentomls_504() -> None:
    status, _, body = asyncio.run(asgi_request(fixed(stall, timeout=0.05)))
    assert status == 504
    assert json.loads(body) == {"error": "Not able to process the request in 0.05 seconds"}


def test_a_started_response_is_not_cut_off() -> None:
    status, _, body = asyncio.run(asgi_request(fixed(slow_stream, timeout=0.05)))
    assert (status, body) == (200, b"late but whole")


def test_the_apps_own_timeout_error_is_not_a_504() -> None:
    with pytest.raises(TimeoutError, match="the app's own"):
        asyncio.run(asgi_request(fixed(own_timeout_error, timeout=30)))


def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def discard(message: Message) -> None:
        return None

    asyncio.run(fixed(lifespan, timeout=30)({"type": "lifespan"}, nothing, discard))
    assert seen == ["lifespan"]


# --- request metrics labelled by route ---------------------------------------------------------


def test_bentoml_still_labels_request_metrics_by_raw_path() -> None:
    """When this fails, BentoML has changed how its request metrics take their `endpoint`
    label: check whether made-up paths still add series, and drop or adapt the fix."""
    source = inspect.getsource(bentoml_fixes._bentoml_metrics_call)
    assert 'endpoint = scope["path"]' in source


def test_route_labels_are_templates_and_unknown_paths_fold_into_one() -> None:
    async def nothing(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    health = Starlette(routes=[Route("/health", nothing)])
    router = Router(
        routes=[
            Route("/predict", nothing, methods=["POST"]),
            Route("/items/{item_id}", nothing),
            Mount("/static_content", app=nothing),
            Mount("/", app=health),
        ]
    )
    labels = RouteLabels(router)
    assert labels("/predict") == "/predict"
    assert labels("/health") == "/health"
    assert labels("/items/42") == "/items/{item_id}"
    assert labels("/static_content/any/file.css") == "/static_content/{path:path}"
    for made_up in ("/nope", "/predict/x", "/items", "/health2", "/../etc/passwd"):
        assert labels(made_up) == UNMATCHED_ROUTE
