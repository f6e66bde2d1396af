"""Textbook BentoML peer: the contract written as BentoML's docs show, with its defaults.

Sync API methods, a pydantic body, a pure ASGI middleware for the key, a mounted app for
`GET /health`. Only the worker count is set, to match the other peers' two workers.
"""

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench import payloads
from bench.peers import contract

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

PUBLIC_PATHS = frozenset({"/health", "/livez", "/readyz", "/healthz"})


class ApiKeyMiddleware:
    """Answer 401 JSON to any non-public request without a valid `x-api-key`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            headers = dict(scope["headers"])
            key = headers.get(payloads.KEY_HEADER.encode(), b"").decode("latin-1")
            if not contract.key_ok(key):
                body = json.dumps(contract.error("missing or invalid API key")).encode()
                start = {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json")],
                }
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def health(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


# Mounted at the root: BentoML's mount only claims the paths its app has routes for.
health_app = Starlette(routes=[Route("/health", health)])


@bentoml.asgi_app(health_app, path="/")
@bentoml.service(workers=2)
class IrisTextbook:
    """The Iris classifier behind the contract's three routes."""

    def __init__(self) -> None:
        self.model = contract.Model()

    @bentoml.api
    def predict(self, record: contract.Record, /) -> dict[str, object]:
        return self.model.predict([record])[0]

    @bentoml.api
    def batch_predict(self, batch: contract.Batch, /) -> dict[str, object]:
        return {"results": self.model.predict(batch.items)}


IrisTextbook.add_asgi_middleware(ApiKeyMiddleware)
