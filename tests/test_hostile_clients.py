"""The real server against hostile clients: made-up paths, oversized and endless request heads,
connections that never finish or sit idle. `bentoml serve` as a subprocess, raw sockets on
loopback, every load bounded in count and time."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from helpers import (
    API_KEYS,
    ROOT,
    RunningServer,
    bentoml_serve,
    both_workers_ready,
    example,
    read_answer,
    start_server,
)

from iris_bento.client_metrics import FLUSH_S

pytestmark = pytest.mark.server

AUTH = {"x-api-key": API_KEYS[0]}
HEAD_TIMEOUT_S = 2  # shorter than the default 10 s, for the suite's time
KEEP_ALIVE_S = 5  # uvicorn's, as `bentoml serve` runs it
MAX_HEAD_BYTES = 32 * 1024


@pytest.fixture(scope="module")
def server(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    overrides = {"connections": {"head_timeout_s": HEAD_TIMEOUT_S}}
    env = {
        "BENTOML_CONFIG_OVERRIDES": json.dumps(
            {"services": {"IrisClassifier": {"iris": overrides}}}
        )
    }
    with start_server(
        bentoml_serve("service:IrisClassifier"),
        cwd=ROOT,
        log_dir=tmp_path_factory.mktemp("hostile"),
        env=env,
    ) as running:
        yield running


def address(server: RunningServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def worker_rss(server: RunningServer) -> int:
    return sum(child.memory_info().rss for child in psutil.Process(server.process.pid).children())


def series(url: str) -> set[str]:
    """Every series in /metrics, by name and labels (values left out)."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"}


def prometheus_bytes(server: RunningServer) -> int:
    folder = next(Path(server.log_path.parent).glob(f"bentoml-home-{address(server)[1]}/prom*"))
    return sum(path.stat().st_size for path in folder.iterdir())


def answer(connection: socket.socket, timeout_s: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or a reset)."""
    connection.settimeout(timeout_s)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def status_and_body(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_unknown_paths_add_no_series(server: RunningServer) -> None:
    # The first unknown path of each status adds its one `unmatched` series, and each worker's
    # first request its own `last_request_timestamp` series: warm both workers up first, once
    # both have started.
    both_workers_ready(server)
    for n in range(40):
        requests.get(f"{server.url}/warm-up", headers=AUTH if n % 2 else {}, timeout=5)
    # The per-client counters reach /metrics once a flush interval has passed.
    time.sleep(2 * FLUSH_S)
    before, files_before = series(server.url), prometheus_bytes(server)

    def hammer(first: int) -> None:
        with requests.Session() as session:
            for n in range(first, 10_000, 4):
                headers = AUTH if n % 2 else {}
                assert session.get(f"{server.url}/nope/{n}", headers=headers).status_code in (
                    401,
                    404,
                )

    threads = [threading.Thread(target=hammer, args=(first,)) for first in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert series(server.url) == before
    assert prometheus_bytes(server) == files_before
    assert any('endpoint="unmatched"' in line for line in before)
    assert not any("/nope/" in line or "/warm-up" in line for line in before)
    scrapes = []
    for _ in range(5):
        started = time.perf_counter()
        requests.get(f"{server.url}/metrics", timeout=5)
        scrapes.append(time.perf_counter() - started)
    assert statistics.median(scrapes) < 0.1


def test_real_routes_keep_their_own_series(server: RunningServer) -> None:
    requests.post(f"{server.url}/predict", json=example("predict"), headers=AUTH, timeout=5)
    requests.get(f"{server.url}/health", timeout=5)
    requests.get(f"{server.url}/static_content/no-such-file.css", headers=AUTH, timeout=5)
    known = series(server.url)
    for endpoint, status in [
        ("/predict", 200),
        ("/health", 200),
        ("/static_content/{path:path}", 404),
    ]:
        pattern = re.compile(
            rf'^bentoml_service_request_total\{{endpoint="{re.escape(endpoint)}",'
            rf'http_response_code="{status}"'
        )
        assert any(pattern.match(line) for line in known), endpoint


@pytest.mark.parametrize(
    "headers",
    [
        [b"x-big: " + b"a" * 64 * 1024],
        [b"x-h%d: v" % n for n in range(200)],
        [b"x-h%d: v" % n for n in range(1000)],
        [b"x-big: " + b"a" * 1024 * 1024],
        [b"x-api-key: " + b"k" * 8 * 1024 * 1024],
    ],
    ids=["64KiB-header", "200-headers", "1000-headers", "1MiB-header", "8MiB-key"],
)
def test_oversized_request_heads_get_431(server: RunningServer, headers: list[bytes]) -> None:
    head = b"\r\n".join([b"GET /health HTTP/1.1", b"Host: iris", *headers]) + b"\r\n\r\n"
    with socket.create_connection(address(server), timeout=10) as connection:
        sender = threading.Thread(target=send_ignoring_resets, args=(connection, head))
        sender.start()
        raw = answer(connection)
        sender.join(timeout=10)
    status, body = status_and_body(raw)
    assert status == 431
    assert body["code"] == 431
    assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", raw)
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def send_ignoring_resets(connection: socket.socket, data: bytes) -> None:
    # The server may answer and close before it has read everything: what is tested.
    with contextlib.suppress(OSError):
        connection.sendall(data)


def test_a_head_just_under_the_limit_is_served(server: RunningServer) -> None:
    padding = "a" * (MAX_HEAD_BYTES - 1024)
    response = requests.get(f"{server.url}/health", headers={"x-pad": padding}, timeout=5)
    assert response.status_code == 200


def test_a_head_that_never_ends_gets_408_and_silence_is_closed(server: RunningServer) -> None:
    with (
        socket.create_connection(address(server)) as partial,
        socket.create_connection(address(server)) as silent,
    ):
        started = time.monotonic()
        partial.sendall(b"POST /predict HTTP/1.1\r\nHost: iris\r\n")
        status, body = status_and_body(answer(partial, timeout_s=HEAD_TIMEOUT_S + 5))
        assert (status, body["code"]) == (408, 408)
        assert answer(silent, timeout_s=5) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT_S + 2


def test_a_kept_alive_connection_that_starts_a_head_gets_the_deadline_too(
    server: RunningServer,
) -> None:
    with socket.create_connection(address(server)) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: iris\r\n\r\n")
        time.sleep(0.5)
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: iris\r\n")
        raw = answer(connection, timeout_s=HEAD_TIMEOUT_S + 5)
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 408" in raw


def test_idle_keep_alive_connections_are_closed(server: RunningServer) -> None:
    with socket.create_connection(address(server)) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: iris\r\n\r\n")
        connection.settimeout(KEEP_ALIVE_S + 5)
        assert read_answer(connection).startswith(b"http/1.1 200")
        started = time.monotonic()
        assert answer(connection, timeout_s=KEEP_ALIVE_S + 5) == b""
        assert KEEP_ALIVE_S - 1 < time.monotonic() - started < KEEP_ALIVE_S + 2


def test_endless_headers_cannot_grow_a_worker(server: RunningServer) -> None:
    """20 connections, each sending one header that never ends (up to 4 MiB each, in 16 KiB
    pieces); worker memory is measured while they are all still open."""
    before = worker_rss(server)
    sent = threading.Barrier(21, timeout=60)

    def endless_header() -> None:
        with socket.create_connection(address(server), timeout=10) as connection:
            # Refused and closed by the server: what is tested.
            with contextlib.suppress(OSError):
                connection.sendall(b"GET /health HTTP/1.1\r\nHost: iris\r\nx-endless: ")
                for _ in range(256):
                    connection.sendall(b"a" * 16 * 1024)
            sent.wait()
            sent.wait()

    threads = [threading.Thread(target=endless_header) for _ in range(20)]
    for thread in threads:
        thread.start()
    sent.wait()
    grown = worker_rss(server) - before
    sent.wait()
    for thread in threads:
        thread.join(timeout=60)
    assert grown < 20 * 1024 * 1024
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def test_normal_clients_are_served_while_500_slow_connections_are_held(
    server: RunningServer,
) -> None:
    slow = []
    try:
        for n in range(500):
            connection = socket.create_connection(address(server), timeout=5)
            if n % 2:
                connection.sendall(b"POST /predict HTTP/1.1\r\nHost: iris\r\n")
            slow.append(connection)
        latencies = []
        with requests.Session() as session:
            for _ in range(100):
                started = time.perf_counter()
                response = session.post(
                    f"{server.url}/predict", json=example("predict"), headers=AUTH
                )
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
        assert sorted(latencies)[98] < 0.5
    finally:
        for connection in slow:
            connection.close()


def test_refused_heads_are_logged_without_flooding(server: RunningServer) -> None:
    for _ in range(5):
        with socket.create_connection(address(server), timeout=5) as connection:
            connection.sendall(b"GET / HTTP/1.1\r\nx-big: " + b"a" * 40_000 + b"\r\n\r\n")
            answer(connection)
    records = [json.loads(line) for line in server.log_lines() if line.startswith("{")]
    refused = [record for record in records if record["message"] == "request head refused"]
    assert refused and all(record["level"] == "WARNING" for record in refused)
    # At most one line per worker per 10 s, however many clients.
    assert len(refused) <= 2 * 2


def test_an_answer_before_the_whole_body_closes_the_connection(server: RunningServer) -> None:
    """A 401 sent before the body arrived: the rest of the body must not be read as the next
    request (nor counted as its head)."""
    body = b"x" * 40_000
    with socket.create_connection(address(server), timeout=10) as connection:
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: iris\r\nx-api-key: wrong\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        time.sleep(0.2)
        send_ignoring_resets(connection, body + b"GET /health HTTP/1.1\r\nHost: iris\r\n\r\n")
        raw = answer(connection)
    assert raw.startswith(b"HTTP/1.1 401")
    assert b"\r\nconnection: close\r\n" in raw.lower()
    assert b"HTTP/1.1 431" not in raw
    assert b"HTTP/1.1 408" not in raw


def test_requests_pipelined_with_a_refused_head_are_never_served(server: RunningServer) -> None:
    too_many = b"".join(b"x-h%d: v\r\n" % n for n in range(101))
    refused = b"GET /health HTTP/1.1\r\nHost: iris\r\n" + too_many + b"\r\n"
    health = b"GET /health HTTP/1.1\r\nHost: iris\r\n\r\n"
    predict = json.dumps(example("predict")).encode()
    valid = (
        b"POST /predict HTTP/1.1\r\nHost: iris\r\ncontent-type: application/json\r\n"
        + f"x-api-key: {API_KEYS[0]}\r\ncontent-length: {len(predict)}\r\n\r\n".encode()
        + predict
    )
    with socket.create_connection(address(server), timeout=10) as connection:
        connection.sendall(refused + health)
        first = answer(connection)
    with socket.create_connection(address(server), timeout=10) as connection:
        connection.sendall(valid + refused)
        second = answer(connection)
    assert first.startswith(b"HTTP/1.1 431") and first.count(b"HTTP/1.1") == 1
    # The valid request gets its own answer; the one behind it none, and the connection closes.
    assert second.startswith(b"HTTP/1.1 200") and second.count(b"HTTP/1.1") == 1
    time.sleep(0.5)
    assert not any('"unhandled error"' in line for line in server.log_lines())


def test_websocket_upgrades_to_unknown_paths_add_no_series(server: RunningServer) -> None:
    def upgrade(path: str) -> None:
        with socket.create_connection(address(server), timeout=5) as connection:
            connection.sendall(
                f"GET {path} HTTP/1.1\r\nHost: iris\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            answer(connection, timeout_s=5)

    for n in range(20):
        upgrade(f"/ws-warm-up-{n}")
    before = series(server.url)
    for n in range(300):
        upgrade(f"/ws-{n}")
    after = series(server.url)
    assert not any("/ws-" in line for line in after)
    assert after == before


def test_unparsable_requests_are_logged_once_in_a_while(server: RunningServer) -> None:
    def logged() -> int:
        return sum("Invalid HTTP request received." in line for line in server.log_lines())

    already = logged()
    for _ in range(200):
        with socket.create_connection(address(server), timeout=5) as connection:
            connection.sendall(b"BAD\r\n\r\n")
            answer(connection)
    time.sleep(0.5)
    # At most one line per worker per 10 s (and never the same line twice).
    assert logged() - already <= 2
