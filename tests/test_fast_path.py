"""The fast path alone, on a bare app behind it, and against BentoML's path in the served app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from helpers import asgi_request, bentoml_endpoints_only, example
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from iris_bento.fast_path import FastPath

PREDICT = json.dumps(example("predict")).encode()


class Behind:
    """The app behind the fast path: records what reaches it, answers 204."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.usefixtures("service_client")  # a served model, as in a worker
@pytest.mark.parametrize("path", ["/predict", "/batch_predict"])
def test_it_answers_its_routes_without_the_app_behind(path: str) -> None:
    behind = Behind()
    body = json.dumps(example(path.lstrip("/"))).encode()
    status, headers, answer = asyncio.run(asgi_request(FastPath(behind), "POST", path, {}, (body,)))
    assert status == 200, answer
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(answer)
    assert behind.paths == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/predict"),
        ("POST", "/predict/"),
        ("POST", "/v2/models/iris_clf/infer"),
        ("POST", "/health"),
        ("GET", "/batch_predict"),
    ],
)
def test_everything_else_goes_on(method: str, path: str) -> None:
    behind = Behind()
    status, _, _ = asyncio.run(asgi_request(FastPath(behind), method, path, {}, (PREDICT,)))
    assert (status, behind.paths) == (204, [path])


def test_a_body_cut_off_is_a_client_disconnect() -> None:
    """As Starlette's `Request.body()` raises it: the request middleware then answers 413 if its
    limit cut the body off, and nobody if the client left."""
    messages = [
        {"type": "http.request", "body": b'{"features":', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"nothing should be sent, got {message}")

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    with pytest.raises(ClientDisconnect):
        asyncio.run(FastPath(Behind())(scope, receive, send))


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/predict", example("predict")),
        ("/batch_predict", example("batch_predict")),
        ("/predict", {"features": [1, 2, 3]}),
        ("/batch_predict", {"items": []}),
        ("/predict", "not an object"),
    ],
)
def test_both_paths_answer_alike(
    service_client: Any, auth: dict[str, str], path: str, payload: Any
) -> None:
    """Status, body and headers (but the request id) equal whichever path answers."""

    def answer() -> tuple[int, bytes, dict[str, str]]:
        response = service_client.post(path, json=payload, headers=auth)
        headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
        return response.status_code, response.content, headers

    fast = answer()
    with bentoml_endpoints_only(service_client):
        assert answer() == fast
