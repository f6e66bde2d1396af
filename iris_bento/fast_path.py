"""`POST /predict` and `/batch_predict` answered ahead of BentoML's routing and endpoint machinery.

BentoML's path for an `@bentoml.api` request (its request context, routing, the endpoint's
signature handling, serde and response headers) costs about 200 µs of CPU a request, several
times what this service's own work costs. This middleware, the innermost of the project's, answers
the two routes with the same functions the `@bentoml.api` methods call (`iris_bento.endpoints`):
the same validation, batcher, body and error contract, after the same outer middlewares (request
id, limits, error contract, access log, auth). The methods stay the declaration of the API: the
OpenAPI document, `/schema.json`, `bentoml.SyncHTTPClient` and `bentoml build` read them.

What it skips, and how that is covered:
- BentoML's request context (`bentoml.context`): the endpoints never read it.
- BentoML's response headers: it sends the same `server` header. With tracing on, BentoML's
  tracing middleware (outside every project middleware) still makes each request's span, but the
  answer lacks BentoML's `X-BentoML-Request-ID` and `X-BentoML-Trace-ID` headers; the project's
  own `x-request-id` is there.
- A client that disconnects before its body is complete raises `ClientDisconnect`, as Starlette's
  `Request.body()` does; one that disconnects later still has its rows computed, and its answer is
  dropped by the server, as on BentoML's path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import bentoml
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from iris_bento import endpoints
from iris_bento.endpoints import ServedModel
from iris_bento.errors import ApiError
from iris_bento.settings import SERVICE_NAME

Answer = Callable[[ServedModel, Scope, bytes], Awaitable[bytes]]


async def _predict(model: ServedModel, scope: Scope, body: bytes) -> bytes:
    return await endpoints.predict(model, *endpoints.parse_predict(body))


async def _batch_predict(model: ServedModel, scope: Scope, body: bytes) -> bytes:
    return await endpoints.batch_predict(model, scope, *endpoints.parse_batch_predict(body))


ROUTES: Final[dict[str, Answer]] = {"/predict": _predict, "/batch_predict": _batch_predict}
# BentoML's own header on its API answers (`_add_response_headers`).
SERVER_HEADER: Final = (b"server", f"BentoML Service/{SERVICE_NAME}".encode())


async def read_body(receive: Receive) -> bytes:
    """The whole request body; `ClientDisconnect` if the client left before sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class FastPath:
    """Answers `POST /predict` and `/batch_predict` itself; passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes = ROUTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if answer is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        headers = [SERVER_HEADER]
        try:
            status, content = 200, await answer(bentoml.get_current_service(), scope, body)
        except ApiError as error:
            status, content = error.status, error.body()
            headers += [(name.encode(), value.encode()) for name, value in error.headers.items()]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})
