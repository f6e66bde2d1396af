"""Per-client quotas.

In process: the quota middleware on a bare app (the rate-limit fields, 429 with an honest
Retry-After, fail-closed 503, nothing at all when quotas are off). The Redis tier: the real
server with 2 workers and a real `redis-server` (tests/redis_server.py): a burst holds across the
workers, clients are isolated, `/batch_predict` is charged its rows, the client's name reaches
the log and the metrics, and Redis stopped in the middle of a load costs no 5xx, with quotas
back once it returns.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from helpers import (
    API_KEYS,
    ROOT,
    RunningServer,
    asgi_request,
    bentoml_serve,
    example,
    free_port,
    logged,
    records,
    start_server,
    wait_for,
)
from redis_server import RedisServer, redis_server_binary
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iris_bento.auth import ApiKeyMiddleware
from iris_bento.clients import Clients, keys_file_line
from iris_bento.errors import renders_api_errors
from iris_bento.http import RequestMiddleware
from iris_bento.quotas import QuotaMiddleware, charge_rows, with_quotas
from iris_bento.settings import QuotaLimits, QuotaSettings

RATE_LIMIT = re.compile(r'"requests";r=(\d+);t=(\d+)')


# In process -----------------------------------------------------------------------------------


@renders_api_errors
async def _rows(request: Request) -> Response:
    await charge_rows(request, int(request.headers.get("x-rows", "1")))
    return JSONResponse({"ok": True})


async def rows(request: Request) -> Response:
    return await _rows(request)


def stack(settings: QuotaSettings) -> Any:
    """The service's order: request middleware, auth, quotas, app."""
    app = Starlette(routes=[Route("/p", rows, methods=["GET", "POST"])])
    app = QuotaMiddleware(app, settings)
    app = ApiKeyMiddleware(app, clients=Clients([("alpha", _digest("a")), ("beta", _digest("b"))]))
    return RequestMiddleware(app)


def _digest(key: str) -> bytes:
    import hashlib

    return hashlib.sha256(key.encode()).digest()


def call(app: Any, key: str, rows: int = 1) -> tuple[int, dict[str, str], bytes]:
    headers = {"x-api-key": key, "x-rows": str(rows)}
    return asyncio.run(asgi_request(app, "GET", "/p", headers=headers))


def quotas(**overrides: Any) -> QuotaSettings:
    return QuotaSettings.model_validate(
        {
            "enabled": True,
            "default": {"requests_per_second": 1, "burst": 3, "rows_per_second": 1000},
        }
        | overrides
    )


def test_answers_carry_the_rate_limit_fields_and_429_says_when() -> None:
    app = stack(quotas())
    seen = [call(app, "a") for _ in range(4)]
    assert [status for status, _, _ in seen] == [200, 200, 200, 429]
    for _, headers, _ in seen:
        assert headers["ratelimit-policy"] == '"requests";q=3;w=3, "rows";q=1000;w=1;qu="rows"'
    remaining = [int(RATE_LIMIT.search(h["ratelimit"]).group(1)) for _, h, _ in seen]
    assert remaining == [2, 1, 0, 0]
    _, headers, body = seen[3]
    assert json.loads(body) == {
        "error": "too many requests",
        "code": 429,
        "details": "client alpha is over its quota of 3 requests per 3 s",
    }
    # The window is 3 s and the first request was just made: a slot is free within 3 s.
    assert headers["retry-after"] in {"1", "2", "3"}
    assert int(headers["retry-after"]) == int(RATE_LIMIT.search(headers["ratelimit"]).group(2))
    # Another client is not affected.
    assert call(app, "b")[0] == 200
    # Without a key: no quota, no fields.
    status, headers, _ = asyncio.run(asgi_request(app, "GET", "/p"))
    assert status == 401 and "ratelimit" not in headers


def test_rows_are_charged_and_refused_with_the_rows_fields() -> None:
    app = stack(quotas(default={"requests_per_second": 100, "burst": 100}))
    status, headers, _ = call(app, "a", rows=700)
    assert status == 200 and '"rows";r=4300;t=1' in headers["ratelimit"]
    status, headers, _ = call(app, "a", rows=700)
    assert status == 200 and '"rows";r=3600;t=1' in headers["ratelimit"]
    status, headers, body = call(app, "a", rows=4000)
    assert status == 429 and headers["retry-after"] == "1"
    assert "over its quota of 5000 rows per 1 s (4000 asked)" in body.decode()


def test_the_mapping_of_burst_onto_moving_windows() -> None:
    from iris_bento.quotas import Policy

    for rate, burst, amount, window in ((50, 100, 100, 2), (5, 10, 10, 2), (30, 100, 100, 3)):
        policy = Policy.of("c", QuotaLimits(requests_per_second=rate, burst=burst))
        assert (policy.requests.amount, policy.requests.get_expiry()) == (amount, window)
    with pytest.raises(ValueError, match="burst must be at least requests_per_second"):
        QuotaLimits(requests_per_second=10, burst=5)


def test_fail_closed_answers_503_when_redis_is_away() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    status, headers, body = call(stack(quotas(storage_url=url, fail_open=False)), "a")
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["details"] == "the quota service is unavailable; retry shortly"
    status, headers, _ = call(stack(quotas(storage_url=url)), "a")
    assert status == 200 and "ratelimit" not in headers


def test_with_quotas_off_the_middleware_is_not_in_the_chain() -> None:
    app = Starlette()
    assert with_quotas(app) is app  # the shipped configuration.yaml: enabled: false


def test_the_shipped_service_sends_no_quota_fields(client: Any, auth: dict[str, str]) -> None:
    response = client.post("/predict", json=example("predict"), headers=auth)
    assert response.status_code == 200 and "ratelimit" not in response.headers


# The Redis tier -------------------------------------------------------------------------------

KEYS = {
    "alpha": "alpha-key-0123456789",
    "beta": "beta-key-0123456789",
    "gamma": "gamma-key-0123456789",
    "rows": "rows-key-0123456789",
    "load": "load-key-0123456789",
}
CLIENT_QUOTAS = {
    "alpha": {"requests_per_second": 2, "burst": 20},  # a window of 10 s
    "gamma": {"requests_per_second": 1, "burst": 2},  # a window of 2 s
    "rows": {"requests_per_second": 100, "burst": 100, "rows_per_second": 1000},
    "load": {"requests_per_second": 100000, "burst": 100000, "rows_per_second": 100000},
}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def served(
    model_tag: str, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The real server, 2 workers, quotas in Redis, clients from a keys file."""
    folder = tmp_path_factory.mktemp("quotas")
    keys_file = folder / "keys"
    keys_file.write_text("\n".join(keys_file_line(name, key) for name, key in KEYS.items()))
    quota_settings = {"enabled": True, "storage_url": redis.url, "clients": CLIENT_QUOTAS}
    overrides = {"services": {"IrisClassifier": {"iris": {"quotas": quota_settings}}}}
    env = {
        "IRIS_API_KEYS": "",  # only the file's clients
        "IRIS_API_KEYS_FILE": str(keys_file),
        "BENTOML_CONFIG_OVERRIDES": json.dumps(overrides),
    }
    with start_server(bentoml_serve("service:IrisClassifier"), ROOT, folder, env) as running:
        yield running


def predict(url: str, client: str, session: Any = requests) -> requests.Response:
    return session.post(
        f"{url}/predict",
        json=example("predict"),
        headers={"x-api-key": KEYS[client], "connection": "close"},
        timeout=10,
    )


def test_a_burst_holds_across_both_workers(served: RunningServer) -> None:
    """Requests in rounds of 8 at once on fresh connections until both workers have answered
    some (a waking worker may accept a whole round, and won all of 12 rounds in a row once):
    exactly the burst of 20 gets through within the window, since both workers count in Redis."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def one() -> None:
        status = predict(served.url, "alpha").status_code
        with lock:
            statuses[status] += 1

    def workers_seen() -> set[int]:
        return {
            record["pid"]
            for record in logged(served, "request")
            if record.get("client") == "alpha" and record["status"] in (200, 429)
        }

    started = time.monotonic()
    while sum(statuses.values()) < 32 or (
        len(workers_seen()) < 2 and time.monotonic() - started < 8
    ):
        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    sent = sum(statuses.values())
    assert time.monotonic() - started < 10, "the load must fit in the 10 s window"
    assert statuses == {200: 20, 429: sent - 20}
    assert len(workers_seen()) == 2, "both workers answered alpha"
    # Another client is isolated from alpha's exhaustion.
    response = predict(served.url, "beta")
    assert response.status_code == 200
    assert RATE_LIMIT.search(response.headers["ratelimit"]).group(1) == "99"


def test_retry_after_is_honest(served: RunningServer) -> None:
    session = requests.Session()
    first = [predict(served.url, "gamma", session) for _ in range(3)]
    assert [r.status_code for r in first] == [200, 200, 429]
    refused = first[2]
    assert refused.json()["code"] == 429
    assert refused.headers["ratelimit-policy"].startswith('"requests";q=2;w=2')
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait <= 2
    time.sleep(wait)
    assert predict(served.url, "gamma", session).status_code == 200


def test_batch_predict_is_charged_its_rows(served: RunningServer) -> None:
    def batch(items: int) -> requests.Response:
        body = {"items": [example("predict")] * items}
        return requests.post(
            f"{served.url}/batch_predict",
            json=body,
            headers={"x-api-key": KEYS["rows"]},
            timeout=10,
        )

    ok = batch(600)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 600
    assert '"rows";r=400;t=1' in ok.headers["ratelimit"]
    refused = batch(600)
    assert refused.status_code == 429
    assert refused.json()["details"] == (
        "client rows is over its quota of 1000 rows per 1 s (600 asked)"
    )
    assert refused.headers["retry-after"] == "1"
    time.sleep(1)
    assert batch(600).status_code == 200
    # The V2 route takes from the same rows quota.
    tensor = {"name": "features", "shape": [600, 4], "datatype": "FP64"}
    tensor["data"] = [example("predict")["features"]] * 600
    v2 = requests.post(
        f"{served.url}/v2/models/iris_clf/infer",
        json={"inputs": [tensor]},
        headers={"x-api-key": KEYS["rows"]},
        timeout=10,
    )
    assert v2.status_code == 429, v2.text
    assert "(600 asked)" in v2.json()["details"]


def test_the_client_is_named_in_the_log_and_metrics_never_its_key(
    served: RunningServer,
) -> None:
    assert predict(served.url, "beta").status_code == 200

    def counted() -> bool:
        text = requests.get(f"{served.url}/metrics", timeout=5).text
        return 'iris_client_requests_total{client="beta",code="200"}' in text

    assert wait_for(counted, timeout_s=5)
    lines = served.log_path.read_text()
    for key in KEYS.values():
        assert key not in lines
        assert keys_file_line("x", key).split(":")[1] not in lines
    assert any(record.get("client") == "beta" for record in logged(served, "request"))

    def rejections_counted() -> bool:
        text = requests.get(f"{served.url}/metrics", timeout=5).text
        return 'iris_quota_rejections_total{client="alpha",quota="requests"}' in text

    assert wait_for(rejections_counted, timeout_s=5)


def test_redis_stopped_in_the_middle_of_a_load(served: RunningServer, redis: RedisServer) -> None:
    """8 clients load the server while Redis goes away for 3 s: no 5xx, every answer served
    (fail open), the failure counted and logged once per interval; quotas apply again after."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    done = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not done.is_set():
            status = session.post(
                f"{served.url}/predict",
                json=example("predict"),
                headers={"x-api-key": KEYS["load"]},
                timeout=10,
            ).status_code
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    redis.stop()
    time.sleep(3)
    redis.start()
    time.sleep(2)
    done.set()
    for thread in threads:
        thread.join()
    assert set(statuses) == {200}, statuses
    warnings = [
        record
        for record in records(served)
        if record["message"].startswith("quota storage not answering")
    ]
    # At most one line per worker per 10 s interval.
    assert 1 <= len(warnings) <= 2, warnings
    text = requests.get(f"{served.url}/metrics", timeout=5).text
    errors = re.search(r"^iris_quota_storage_errors_total (\S+)$", text, re.MULTILINE)
    assert errors is not None and float(errors.group(1)) > 0
    # Redis is back (empty: it keeps nothing): quotas apply again.
    session = requests.Session()
    statuses_after = [predict(served.url, "gamma", session).status_code for _ in range(3)]
    assert statuses_after == [200, 200, 429]
    assert logged(served, "quota storage answering again")


def test_requests_without_a_key_never_touch_the_quota(served: RunningServer) -> None:
    response = requests.post(f"{served.url}/predict", json=example("predict"), timeout=5)
    assert response.status_code == 401 and "ratelimit" not in response.headers
    response = requests.get(f"{served.url}/health", timeout=5)
    assert response.status_code == 200 and "ratelimit" not in response.headers
    # The suite's own IRIS_API_KEYS are not set for this server: only the file's clients.
    response = requests.post(
        f"{served.url}/predict",
        json=example("predict"),
        headers={"x-api-key": API_KEYS[0]},
        timeout=5,
    )
    assert response.status_code == 401 and "ratelimit" not in response.headers


def test_the_memory_storage_hooks_still_exist() -> None:
    """iris_bento/quotas.py replaces limits' per-hit expiry timer with one thread, through the
    storage's name-mangled methods: a limits release that renames them fails here."""
    from limits.storage import MemoryStorage

    from iris_bento.quotas import _memory_storage

    assert callable(MemoryStorage._MemoryStorage__schedule_expiry)  # type: ignore[attr-defined]
    assert callable(MemoryStorage._MemoryStorage__expire_events)  # type: ignore[attr-defined]
    storage = _memory_storage()
    assert storage.acquire_entry("k", 2, 1) and storage.acquire_entry("k", 2, 1)
    assert not storage.acquire_entry("k", 2, 1)
    time.sleep(1.3)  # expired, and dropped by the expiry thread
    assert storage.events.get("k", []) == []
    assert storage.acquire_entry("k", 2, 1)
