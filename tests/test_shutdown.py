"""SIGTERM on the real server under load: nothing the server accepted is lost, the drain is
visible to probes and clients, new connections are refused once it ends, the stop is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import (
    API_KEYS,
    ROOT,
    RunningServer,
    bentoml_serve,
    both_workers_ready,
    example,
    fresh_session,
    predict_through_a_stop,
    start_server,
)

pytestmark = pytest.mark.server

AUTH = {"x-api-key": API_KEYS[0]}
DRAIN_S = 2  # shorter than the default 5 s, for the suite's time
CLIENTS = 32


@contextmanager
def draining_server(log_dir: Path) -> Iterator[RunningServer]:
    """The server with a short drain, once both its workers run: /readyz answers once one does,
    and a worker still starting when SIGTERM comes is stopped without draining."""
    overrides = {"services": {"IrisClassifier": {"iris": {"shutdown": {"drain_s": DRAIN_S}}}}}
    with start_server(
        bentoml_serve("service:IrisClassifier"),
        cwd=ROOT,
        log_dir=log_dir,
        env={"BENTOML_CONFIG_OVERRIDES": json.dumps(overrides)},
    ) as server:
        both_workers_ready(server)
        yield server


@pytest.mark.parametrize("target", ["supervisor", "process-group"])
def test_sigterm_under_load_loses_no_request(model_tag: str, tmp_path: Path, target: str) -> None:
    """SIGTERM to `bentoml serve` (a container's PID 1), or to its process group (`kill --
    -PGID`, `timeout`; circus runs each worker in a session of its own, so only the supervisor
    gets it there too): every request the server accepted is answered."""
    with draining_server(tmp_path) as server:
        pid = server.process.pid
        kill = os.kill if target == "supervisor" else os.killpg
        outcomes, stopped_after = predict_through_a_stop(
            server.url,
            stop=lambda: kill(pid, signal.SIGTERM),
            wait_stopped=lambda: server.process.wait(timeout=DRAIN_S + 30),
        )
    assert outcomes["lost"] == 0, outcomes
    assert outcomes["ok"] > 100
    assert set(outcomes) <= {"ok", "refused"}, outcomes
    assert outcomes["refused"] > 0, "clients that kept coming found the listener closed"
    assert DRAIN_S < stopped_after < DRAIN_S + 5
    assert server.process.returncode == 0


def test_a_draining_server_is_not_ready_closes_connections_then_refuses(
    model_tag: str, tmp_path: Path
) -> None:
    with draining_server(tmp_path) as server:
        host, port = server.url.removeprefix("http://").split(":")
        # A slow upload in flight across the whole drain: it is answered, after the listener
        # has closed.
        upload = socket.create_connection((host, int(port)), timeout=30)
        body = json.dumps(example("predict")).encode()
        upload.sendall(
            b"POST /predict HTTP/1.1\r\nHost: iris\r\ncontent-type: application/json\r\n"
            + f"x-api-key: {API_KEYS[0]}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        os.kill(server.process.pid, signal.SIGTERM)
        time.sleep(0.3)
        with fresh_session() as session:
            ready = session.get(f"{server.url}/readyz", timeout=5)
            assert ready.status_code == 503
            assert ready.json()["code"] == 503
            assert ready.headers["retry-after"] == "1"
            for path in ("/v2/health/ready", "/v2/models/iris_clf/ready"):
                v2_ready = session.get(f"{server.url}{path}", headers=AUTH, timeout=5)
                assert (v2_ready.status_code, v2_ready.json()["code"]) == (503, 503), path
            predicted = session.post(
                f"{server.url}/predict", json=example("predict"), headers=AUTH, timeout=5
            )
            assert predicted.status_code == 200
            assert predicted.headers["connection"] == "close"
        time.sleep(DRAIN_S + 0.5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=5)
        assert server.process.poll() is None, "the upload in flight keeps the worker"
        upload.sendall(body[5:])
        upload.settimeout(10)
        assert upload.recv(65536).startswith(b"HTTP/1.1 200")
        upload.close()
        assert server.process.wait(timeout=10) == 0
        log = server.log_path.read_text()
        assert log.count('"SIGTERM: draining"') == 2, "one line per worker"
        assert "new connections are refused" in log
