"""The two project middlewares, each on a tiny bare app (as Starlette tests its own)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
import yaml
from helpers import ROOT, asgi_request
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from iris_bento import clients
from iris_bento.auth import PUBLIC_PATHS, ApiKeyMiddleware
from iris_bento.clients import load_clients
from iris_bento.fast_path import read_body
from iris_bento.http import RequestMiddleware
from iris_bento.schemas import field_path
from iris_bento.settings import (
    MAX_KEY_BYTES,
    ApiKeysError,
    BatchingSettings,
    ConnectionSettings,
    LimitSettings,
    ProjectSettings,
)

KEYS = ("first-key", "second-key")
ORIGIN = "http://localhost:8080"


async def ok(_: Request) -> Response:
    return JSONResponse({"ok": True})


async def echo_length(request: Request) -> Response:
    return JSONResponse({"length": len(await request.body())})


async def boom(_: Request) -> Response:
    raise RuntimeError("/srv/secret/path.py exploded")


async def plain_500(_: Request) -> Response:
    return PlainTextResponse("Internal Server Error at /srv/app.py", status_code=500)


def bare_app() -> Starlette:
    routes = [Route("/p", ok, methods=["GET", "POST"]), Route("/boom", boom)]
    routes += [Route("/plain500", plain_500), Route("/read", echo_length, methods=["POST"])]
    routes += [Route(path, ok) for path in PUBLIC_PATHS]
    return Starlette(routes=routes)


def stack(limits: LimitSettings | None = None, cors: bool = False) -> Any:
    """The service's order: request middleware, CORS (when on), auth, app."""
    app: Any = ApiKeyMiddleware(bare_app(), keys=KEYS)
    if cors:
        app = CORSMiddleware(app, allow_origins=[ORIGIN], allow_methods=["GET", "POST"])
    return RequestMiddleware(app, limits=limits or LimitSettings())


def call(app: Any, method: str = "GET", path: str = "/p", **kwargs: Any) -> Any:
    return asyncio.run(asgi_request(app, method, path, **kwargs))


def contract(status: int, body: bytes) -> Any:
    payload = json.loads(body)
    assert set(payload) == {"error", "code", "details"}
    assert payload["code"] == status
    return payload


# --- auth ------------------------------------------------------------------------------------


def test_no_key_is_401_with_a_challenge() -> None:
    status, headers, body = call(stack())
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert "x-api-key" in contract(401, body)["details"]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "first-key"},
        {"x-api-key": "second-key"},
        {"authorization": "Bearer first-key"},
        {"authorization": "bearer second-key"},
        {"x-api-key": "first-key "},
        {"authorization": "Bearer second-key "},
    ],
)
def test_valid_keys_pass(headers: dict[str, str]) -> None:
    assert call(stack(), headers=headers)[0] == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "wrong"},
        {"x-api-key": "first-keyX"},
        {"x-api-key": ""},
        {"authorization": "Basic first-key"},
        {"authorization": "Bearer"},
    ],
)
def test_invalid_keys_are_refused(headers: dict[str, str]) -> None:
    status, _, body = call(stack(), headers=headers)
    assert status == 401
    assert b"first-key" not in body


@pytest.mark.parametrize(
    "headers",
    [
        [("x-api-key", "first-key"), ("x-api-key", "wrong")],
        [("x-api-key", "wrong"), ("x-api-key", "first-key")],
        [("x-api-key", "first-key"), ("x-api-key", "first-key")],
        [("x-api-key", "first-key"), ("authorization", "Bearer second-key")],
        [("authorization", "Bearer wrong"), ("x-api-key", "first-key")],
    ],
    ids=["valid-first", "valid-second", "same-twice", "two-valid", "bearer-and-key"],
)
def test_several_credentials_are_refused_whatever_their_order(
    headers: list[tuple[str, str]],
) -> None:
    """RFC 6750: credentials sent more than once make a malformed request (400), so the answer
    never depends on which header comes first."""
    status, response_headers, body = call(stack(), headers=headers)
    assert status == 400
    assert "one API key" in contract(400, body)["details"]
    assert "www-authenticate" not in response_headers


def test_an_overlong_key_is_refused_without_a_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    comparisons = []
    compare = lambda *args: bool(comparisons.append(args))  # noqa: E731
    monkeypatch.setattr(clients.hmac, "compare_digest", compare)
    status, _, _ = call(stack(), headers={"x-api-key": "k" * (MAX_KEY_BYTES + 1)})
    assert (status, comparisons) == (401, [])
    call(stack(), headers={"x-api-key": "k" * MAX_KEY_BYTES})
    assert len(comparisons) == len(KEYS)


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS))
def test_public_paths_need_no_key(path: str) -> None:
    assert call(stack(), path=path)[0] == 200


def test_a_new_route_is_protected_by_default() -> None:
    assert call(stack(), path="/not-listed")[0] == 401


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
def test_every_method_needs_a_key(method: str) -> None:
    assert call(stack(), method)[0] == 401


def test_only_real_preflights_pass_without_a_key() -> None:
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST"}
    assert call(stack(), "OPTIONS", headers=preflight)[0] != 401
    assert call(stack(), "OPTIONS", headers={"origin": ORIGIN})[0] == 401


def test_websockets_need_a_key_too() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/p", "headers": []}
    asyncio.run(ApiKeyMiddleware(bare_app(), keys=KEYS)(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_cors_preflight_passes_and_401s_carry_cors_headers() -> None:
    app = stack(cors=True)
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST"}
    status, headers, _ = call(app, "OPTIONS", headers=preflight)
    assert status == 200
    assert headers["access-control-allow-origin"] == ORIGIN
    status, headers, _ = call(app, "POST", headers={"origin": ORIGIN})
    assert status == 401
    assert headers["access-control-allow-origin"] == ORIGIN


def test_the_service_refuses_to_start_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRIS_API_KEYS", " , ")
    monkeypatch.delenv("IRIS_API_KEYS_FILE", raising=False)
    with pytest.raises(ApiKeysError, match="IRIS_API_KEYS is not set"):
        load_clients()
    monkeypatch.setenv("IRIS_API_KEYS", " a-key ,second ")
    assert len(load_clients()) == 2


def test_the_service_refuses_a_key_no_client_could_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRIS_API_KEYS", "short," + "k" * (MAX_KEY_BYTES + 1))
    with pytest.raises(ApiKeysError, match="longer than 256 bytes"):
        load_clients()


def test_without_keys_the_middleware_accepts_nothing() -> None:
    app = RequestMiddleware(ApiKeyMiddleware(bare_app(), keys=()))
    assert call(app, headers={"x-api-key": ""})[0] == 401
    assert call(app, headers={"authorization": "Bearer "})[0] == 401


# --- request middleware ----------------------------------------------------------------------

AUTH = {"x-api-key": "first-key"}


def test_exceptions_become_a_contract_500_without_detail(caplog: pytest.LogCaptureFixture) -> None:
    status, headers, body = call(stack(), path="/boom", headers=AUTH)
    details = contract(500, body)["details"]
    assert status == 500
    assert headers["x-request-id"] in details
    assert b"/srv" not in body and b"Traceback" not in body
    assert "exploded" in caplog.text  # the log has what the client does not


def test_foreign_error_bodies_are_rewritten() -> None:
    status, _, body = call(stack(), path="/plain500", headers=AUTH)
    assert status == 500
    assert b"app.py" not in body
    contract(500, body)


def test_a_short_plain_text_client_error_keeps_its_words() -> None:
    app = stack(cors=True)
    refused = {"origin": "http://elsewhere", "access-control-request-method": "POST"}
    status, _, body = call(app, "OPTIONS", headers=refused)
    assert status == 400
    assert contract(400, body)["details"] == "Disallowed CORS origin"


def test_a_request_over_its_deadline_is_a_contract_504() -> None:
    async def stalled(_: Request) -> Response:
        await asyncio.sleep(5)
        return JSONResponse({})

    app = RequestMiddleware(
        Starlette(routes=[Route("/stalled", stalled)]),
        limits=LimitSettings(request_timeout_s=0.05),
    )
    status, headers, body = call(app, path="/stalled")
    assert status == 504
    assert headers["x-request-id"]
    assert "0.05" in contract(504, body)["details"]


def test_a_client_that_leaves_mid_body_gets_no_answer_and_a_499_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def reads_body(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)

    messages = [{"type": "http.request", "body": b"{", "more_body": True}]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    with caplog.at_level("INFO", logger="iris_bento"):
        asyncio.run(RequestMiddleware(reads_body)(scope, receive, send))
    assert sent == []
    assert [record.status for record in caplog.records] == [499]  # type: ignore[attr-defined]


def test_body_limit_by_content_length_and_by_counting() -> None:
    limits = LimitSettings(max_body_bytes=10)
    headers = {**AUTH, "content-type": "application/json"}
    status, _, body = call(stack(limits), "POST", headers={**headers, "content-length": "11"})
    assert status == 413
    contract(413, body)
    chunked = {**headers, "transfer-encoding": "chunked"}
    over = (b"123456", b"78901")
    status, _, body = call(stack(limits), "POST", "/read", headers=chunked, body_chunks=over)
    assert status == 413
    contract(413, body)
    within = (b"12345", b"67890")
    status, _, body = call(stack(limits), "POST", "/read", headers=chunked, body_chunks=within)
    assert (status, json.loads(body)) == (200, {"length": 10})


def test_non_json_body_is_415_but_bodiless_post_is_not() -> None:
    status, _, _ = call(
        stack(), "POST", headers={**AUTH, "content-type": "text/plain", "content-length": "2"}
    )
    assert status == 415
    assert call(stack(), "POST", headers=AUTH)[0] == 200
    for media_type in ("application/json", "application/json; charset=utf-8", "application/x+json"):
        headers = {**AUTH, "content-type": media_type, "content-length": "2"}
        assert call(stack(), "POST", headers=headers)[0] == 200


def test_in_flight_limit_is_429_but_never_for_probes() -> None:
    release = asyncio.Event()

    async def slow(_: Request) -> Response:
        await release.wait()
        return JSONResponse({})

    app = RequestMiddleware(
        Starlette(routes=[Route("/slow", slow), Route("/health", ok)]),
        limits=LimitSettings(max_in_flight=1),
    )

    async def scenario() -> tuple[int, int, int]:
        first = asyncio.create_task(asgi_request(app, path="/slow"))
        await asyncio.sleep(0.05)
        second = await asgi_request(app, path="/slow")
        assert second[1]["retry-after"] == "1"
        probe = await asgi_request(app, path="/health")
        release.set()
        return (await first)[0], second[0], probe[0]

    assert asyncio.run(scenario()) == (200, 429, 200)


@pytest.mark.parametrize("own_header", [False, True])
def test_503_answers_say_when_to_retry(own_header: bool) -> None:
    """The service's queue-full 503 (and BentoML's own 429 and 503) pass through here."""

    async def overloaded(_: Request) -> Response:
        headers = {"retry-after": "7"} if own_header else {}
        return JSONResponse({"error": "x", "code": 503, "details": None}, 503, headers)

    app = RequestMiddleware(Starlette(routes=[Route("/full", overloaded)]))
    status, headers, _ = call(app, path="/full")
    assert (status, headers["retry-after"]) == (503, "7" if own_header else "1")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("has space", False)],
)
def test_request_id_echo_rules(sent: str, kept: bool) -> None:
    _, headers, _ = call(stack(), headers={**AUTH, "x-request-id": sent})
    assert (headers["x-request-id"] == sent) is kept


def closing_answers(mean_requests: int, requests: int, path: str = "/p") -> int:
    """How many of `requests` answers told the client to close its connection."""
    app = RequestMiddleware(
        ApiKeyMiddleware(bare_app(), keys=KEYS),
        connections=ConnectionSettings(mean_requests=mean_requests),
        chance=random.Random(7),  # noqa: S311 (a fixed seed: the same draws every run)
    )

    async def scenario() -> int:
        answers = [await asgi_request(app, path=path, headers=AUTH) for _ in range(requests)]
        return sum(headers.get("connection") == "close" for _, headers, _ in answers)

    return asyncio.run(scenario())


def test_connections_end_after_mean_requests_on_average() -> None:
    assert 400 <= closing_answers(mean_requests=4, requests=2000) <= 600


def test_every_answer_closes_with_one_request_per_connection_even_errors() -> None:
    assert closing_answers(mean_requests=1, requests=20) == 20
    assert closing_answers(mean_requests=1, requests=20, path="/nowhere") == 20


def test_connections_stay_open_when_mean_requests_is_zero() -> None:
    assert closing_answers(mean_requests=0, requests=500) == 0


def test_error_locations_read_like_paths() -> None:
    assert field_path(("items", 3, "features", "list", 0)) == "items[3].features[0]"
    assert field_path(("features", "object", "sepal_length")) == "features.sepal_length"
    assert field_path(("features", "object", "list")) == "features.list"
    assert field_path(("object",)) == "object"
    assert field_path(()) == "body"


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="max_queue_rows"):
        ProjectSettings(
            limits=LimitSettings(max_batch_items=100), batching=BatchingSettings(max_queue_rows=10)
        )
    with pytest.raises(ValueError, match="request_timeout_s"):
        ProjectSettings(
            limits=LimitSettings(request_timeout_s=5), batching=BatchingSettings(timeout_s=5)
        )
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchingSettings(max_wait_ms=2000, timeout_s=2)


def test_project_deadlines_answer_before_bentomls_own() -> None:
    service = yaml.safe_load((ROOT / "configuration.yaml").read_text())["services"][
        "IrisClassifier"
    ]
    settings = ProjectSettings.model_validate(service["iris"])
    assert settings.batching.timeout_s < settings.limits.request_timeout_s
    assert settings.limits.request_timeout_s < service["traffic"]["timeout"]
    assert settings.limits.max_in_flight < service["traffic"]["max_concurrency"]
