"""HAProxy in front of the real server (deploy/haproxy/haproxy.cfg): the request-head limits and
the head deadline of the hardening issue hold at the edge too, and HAProxy's own errors keep the
service's error shape where HAProxy 2.6 lets them.

HAProxy comes from Debian (scripts/apt_install.sh installs it when missing, as root); the drills
that use it under load are in tests/test_rollout.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import API_KEYS, RunningServer, example, free_port

from rollout.haproxy import CONFIG, HAProxy, ensure_installed

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def installed() -> None:
    try:
        ensure_installed()
    except (subprocess.CalledProcessError, OSError) as error:
        pytest.skip(f"edge tier: haproxy not installed and cannot be here ({error})")


@pytest.fixture(scope="module")
def edge(
    installed: None, server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """HAProxy (host:port) with the real server in both of its slots."""
    address = server.url.removeprefix("http://")
    haproxy = HAProxy(f"127.0.0.1:{free_port()}", [address, address], tmp_path_factory.mktemp("lb"))
    haproxy.start()
    try:
        haproxy.wait_status("s1", "UP", 30)
        yield haproxy.bind
    finally:
        haproxy.stop()


def exchange(address: str, data: bytes, timeout_s: float = 15) -> tuple[str, bytes]:
    """Raw bytes to HAProxy; its status line and the whole answer (until it closes)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(data)
        connection.settimeout(timeout_s)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode(), answer


def predict_head(extra_headers: int = 0, padding: int = 0) -> bytes:
    """A /predict with 5 headers, `extra_headers` more, and one padded by `padding` bytes."""
    body = b'{"features": [5.1, 3.5, 1.4, 0.2]}'
    lines = [
        b"POST /predict HTTP/1.1",
        b"host: edge",
        f"x-api-key: {API_KEYS[0]}".encode(),
        b"content-type: application/json",
        b"connection: close",
        b"content-length: %d" % len(body),
        *(b"x-extra-%d: 1" % i for i in range(extra_headers)),
    ]
    if padding:
        lines.append(b"x-padding: " + b"a" * padding)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def head_of(size: int) -> bytes:
    """A /predict whose head (request line and headers, blank line included) is `size` bytes."""
    bare = predict_head(padding=1)
    head_size = bare.index(b"\r\n\r\n") + 4
    return predict_head(padding=1 + size - head_size)


def test_predicts_through_haproxy(edge: str) -> None:
    answer = requests.post(
        f"http://{edge}/predict",
        json=example("predict"),
        headers={"x-api-key": API_KEYS[0]},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.json()["model_version"]


def test_a_hundred_headers_pass_and_one_more_is_refused_at_the_edge(edge: str) -> None:
    assert exchange(edge, predict_head(extra_headers=95))[0] == "HTTP/1.1 200 OK"
    status, answer = exchange(edge, predict_head(extra_headers=96))
    assert status == "HTTP/1.1 400 Bad request", answer[:300]  # HAProxy's own, not the 431


def test_a_32_kib_head_reaches_the_service_and_a_larger_one_stops_at_the_edge(edge: str) -> None:
    """The service's limit is exact (431 past 32 KiB as it receives the head); HAProxy's cut is
    a little higher (33,606 bytes measured for this head: its parsed form takes more room)."""
    status, answer = exchange(edge, head_of(32 * 1024))
    assert status == "HTTP/1.1 200 OK", answer[:300]
    status, answer = exchange(edge, head_of(33_000))
    assert status.startswith("HTTP/1.1 431"), answer[:300]
    status, answer = exchange(edge, head_of(34 * 1024))
    assert status == "HTTP/1.1 400 Bad request", answer[:300]


def test_a_slow_head_gets_408_after_ten_seconds_at_the_edge(edge: str) -> None:
    started = time.monotonic()
    status, _ = exchange(edge, b"POST /predict HTTP/1.1\r\nhost: edge\r\n", timeout_s=20)
    waited = time.monotonic() - started
    assert status == "HTTP/1.1 408 Request Time-out"
    assert 9.5 < waited < 12, waited


def test_no_instance_in_the_pool_is_a_503_in_the_error_shape(
    installed: None, tmp_path: Path
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    haproxy = HAProxy(f"127.0.0.1:{free_port()}", [nobody, nobody], tmp_path)
    haproxy.start()
    try:
        haproxy.wait_status("s1", "DOWN", 30)
        answer = requests.post(f"http://{haproxy.bind}/predict", json={}, timeout=10)
    finally:
        haproxy.stop()
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": "Service Unavailable", "code": 503, "details": None}


@pytest.mark.parametrize(
    "servers",
    [
        {"IRIS_SERVER_1": "127.0.0.1:3001", "IRIS_SERVER_2": "127.0.0.1:3002"},
        {"IRIS_SERVER_1": "iris-1:3000", "IRIS_SERVER_2": "iris-2:3000", "IRIS_LB_DNS": "1"},
    ],
    ids=["drills", "compose"],
)
def test_configuration_is_valid(installed: None, servers: dict[str, str]) -> None:
    """As the drills start HAProxy (addresses, a spare slot) and as compose.yaml does (names
    resolved by the containers' DNS): `haproxy -c` finds no error and no warning but the
    replicas' names, which only compose's network resolves."""
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(CONFIG)],
        env={**os.environ, **servers, "IRIS_LB_SOCKET": "/nonexistent/check.sock"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stderr.splitlines() if "WARNING" in line]
    assert all("could not resolve address 'iris-" in line for line in warnings), warnings
