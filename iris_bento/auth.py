"""API-key authentication as pure ASGI middleware: every path is protected unless listed public.
A request with a valid key carries its client (`iris_bento.clients.Client`) in
`scope["state"]["client"]` for the middlewares and endpoints inside."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from iris_bento.clients import STATE_KEY, Clients, load_clients
from iris_bento.docs import DOCS_PATHS, STATIC_PREFIX
from iris_bento.errors import error_body, error_headers
from iris_bento.settings import project_settings

# Probes (the Open Inference Protocol's too), metrics, and the descriptions of the service that
# clients read before they send a key (BentoML's client reads /schema.json and /readyz, a V2
# client /v2). Everything else needs a key; the docs UI too, unless `iris.docs.public` is on.
PUBLIC_PATHS: Final = frozenset(
    {"/health", "/livez", "/readyz", "/healthz", "/metrics", "/schema.json"}
    | {"/v2", "/v2/health/live", "/v2/health/ready"}
)

_CHALLENGE: Final = (b"www-authenticate", b'Bearer realm="iris", charset="UTF-8"')


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS


def is_preflight(scope: Scope) -> bool:
    """A CORS preflight: browsers send it without credentials, so it must pass."""
    if scope["type"] != "http" or scope["method"] != "OPTIONS":
        return False
    names = {name for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every key the request presents, in `x-api-key` or as `Authorization: Bearer` (which
    `bentoml.SyncHTTPClient` sends)."""
    keys = []
    for name, value in headers:
        if name == b"x-api-key":
            keys.append(value.strip())
        elif name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                keys.append(token.strip())
    return keys


class ApiKeyMiddleware:
    """Rejects requests without a valid key with a 401 in the error contract. With no keys
    configured it accepts none (the service itself refuses to start without keys)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str] | None = None,
        public_docs: bool | None = None,
        clients: Clients | None = None,
    ) -> None:
        self.app = app
        if clients is None:
            clients = load_clients() if keys is None else Clients.from_keys(keys)
        self._clients = clients
        if public_docs is None:
            public_docs = project_settings().docs.public
        self._public_docs = public_docs

    def _is_open(self, path: str) -> bool:
        """A path that answers without a key."""
        if is_public(path):
            return True
        return self._public_docs and (path in DOCS_PATHS or path.startswith(STATIC_PREFIX))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or is_preflight(scope) or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        keys = presented_keys(scope["headers"])
        if len(keys) == 1 and (client := self._clients.identify(keys[0])) is not None:
            scope.setdefault("state", {})[STATE_KEY] = client
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        if not keys:
            status, detail = (
                401,
                "send an API key in the x-api-key header or as Authorization: Bearer",
            )
        elif len(keys) > 1:
            # RFC 6750: a request that carries its credentials more than once is malformed.
            status, detail = 400, "send one API key, in x-api-key or as Authorization: Bearer"
        else:
            status, detail = 401, "the API key is not valid"
        body = error_body(status, detail)
        headers = error_headers(body)
        if status == 401:
            headers.append(_CHALLENGE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
