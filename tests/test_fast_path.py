"""The fast path alone, on a bare app behind it, and against BentoML's path in the served app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from helpers import asgi_request, bentoml_endpoints_only, example
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from iris_bento.endpoints import batch_rows, invalid, parse_batch_predict
from iris_bento.errors import InvalidInput
from iris_bento.fast_path import FastPath
from iris_bento.features import FEATURE_NAMES, MAX_CM, MIN_CM
from iris_bento.schemas import BatchPredictRequest
from iris_bento.settings import project_settings

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
    """Status, body and headers equal whichever path answers; but the request id, and the
    `connection: close` that ends one connection in `mean_requests` at random."""

    def answer() -> tuple[int, bytes, dict[str, str]]:
        response = service_client.post(path, json=payload, headers=auth)
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("x-request-id", "connection")
        }
        return response.status_code, response.content, headers

    fast = answer()
    with bentoml_endpoints_only(service_client):
        assert answer() == fast


# --- the faster validation of batches is exactly the full schema's -----------------------------

VALUES = st.one_of(
    st.floats(-1, 120, allow_nan=False),
    st.integers(-5, 150),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
MEASUREMENT_LISTS = st.lists(st.floats(MIN_CM, MAX_CM), min_size=4, max_size=4)
VALID_ITEMS = st.fixed_dictionaries(
    {"features": MEASUREMENT_LISTS}, optional={"id": st.one_of(st.none(), st.text(max_size=128))}
)
NAMED_FEATURES = st.fixed_dictionaries({name: st.floats(MIN_CM, MAX_CM) for name in FEATURE_NAMES})
# A valid item with one thing changed, or no item at all.
ODD_ITEMS = st.one_of(
    st.builds(lambda item, value: {**item, "extra": value}, VALID_ITEMS, VALUES),
    st.builds(
        lambda item, features: {**item, "features": features},
        VALID_ITEMS,
        st.one_of(st.lists(VALUES, min_size=3, max_size=5), VALUES, NAMED_FEATURES),
    ),
    st.builds(
        lambda item, request_id: {**item, "id": request_id},
        VALID_ITEMS,
        st.one_of(st.text(min_size=127, max_size=130), st.integers(), st.booleans()),
    ),
    st.builds(lambda item: {"id": item.get("id")}, VALID_ITEMS),
    VALUES,
)
# Valid batches with at most one odd item somewhere, and bodies that are not batches at all.
BODIES = st.one_of(
    st.builds(
        lambda items, odd, at: {"items": [*items[:at], odd, *items[at:]]},
        st.lists(VALID_ITEMS, max_size=5),
        ODD_ITEMS,
        st.integers(0, 5),
    ),
    st.fixed_dictionaries({"items": st.lists(VALID_ITEMS, max_size=4)}, optional={"x": VALUES}),
    VALUES,
)


def full_schema(body: bytes) -> Any:
    """What `BatchPredictRequest` alone makes of a body: ids and rows, or the 400's details."""
    try:
        request = BatchPredictRequest.model_validate_json(body or b"{}")
    except ValidationError as error:
        return invalid(error).details
    request_ids, rows = batch_rows(request.items)
    return request_ids, rows.tolist()


def fast_path(body: bytes) -> Any:
    try:
        request_ids, rows = parse_batch_predict(body)
    except InvalidInput as error:
        return error.details
    return request_ids, rows.tolist()


@settings(max_examples=400, deadline=None)
@given(payload=BODIES)
def test_batches_validate_exactly_as_the_full_schema(payload: Any) -> None:
    body = json.dumps(payload).encode()
    assert fast_path(body) == full_schema(body)


def test_an_oversized_batch_is_refused_before_its_items_are_read() -> None:
    items = [{"features": "not even a list"}] * (project_settings().limits.max_batch_items + 1)
    body = json.dumps({"items": items}).encode()
    assert fast_path(body) == [{"field": "items", "message": "at most 1000 items per request"}]


@pytest.mark.parametrize(
    "body",
    [
        b'{"items":[{"features":[1,2,3,4],"features":[5,6,7,8]}]}',  # the last value counts
        b'{"items":[{"features":[1,2,3,4],"id":5,"id":"a"}]}',
        b'{"items":[{"features":[1,2,3,4],"id":"\\ud800"}]}',  # a lone surrogate
        b'{"items":[{"features":[1,2,3,1e400]}]}',
        b'{"items":[{"features":[1,2,3,NaN]}]}',
        b'{"items":[{"features":[-0.0,0,100,100.0]}]}',
        b'{"items":[{"features":[1,2,3,4]}]} trailing',
        b"",
        ('{"items":[{"features":[1,2,3,4],"id":"' + "\U0001f33c" * 128 + '"}]}').encode(),
        ('{"items":[{"features":[1,2,3,4],"id":"' + "\U0001f33c" * 129 + '"}]}').encode(),
    ],
    ids=lambda body: body[:40].decode(errors="replace"),
)
def test_edge_cases_of_json_validate_as_the_full_schema(body: bytes) -> None:
    assert fast_path(body) == full_schema(body)
