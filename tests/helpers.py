"""Test helpers: example payloads, the real server as a subprocess, and raw ASGI calls."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import requests
from requests.adapters import HTTPAdapter
from starlette.types import ASGIApp, Message

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
API_KEYS = ("test-key-one", "test-key-two")
READY_TIMEOUT_S = 90


def example(name: str) -> dict[str, Any]:
    """A payload from examples/, the same files the README's curl commands send."""
    return json.loads((ROOT / "examples" / f"{name}.json").read_text())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def live_children(pid: int) -> set[int]:
    """The pids of a process's children that still run (zombies and the vanished left out)."""
    alive = set()
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def refused_start(env: dict[str, str], port: int | None = None) -> str:
    """`bentoml serve` with `env`, expected to stop before any worker with exit 1 and one
    line, no traceback: that line."""
    result = subprocess.run(
        [
            str(BIN / "bentoml"),
            "serve",
            "service:IrisClassifier",
            "--port",
            str(port or free_port()),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    # BentoML's own INFO lines saying which configuration it read are not errors.
    lines = [line for line in output.splitlines() if "Applying user config override" not in line]
    assert len(lines) == 1 and lines[0].startswith("Error:"), output
    return lines[0]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, as an orchestrator sends it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Polls /readyz (with a timeout per try: it can hang while the server boots)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server not ready in {READY_TIMEOUT_S} s:\n{log_path.read_text()}")


def bentoml_serve(target: str) -> list[str]:
    """`bentoml serve TARGET`, for `start_server`."""
    return [str(BIN / "bentoml"), "serve", target]


@contextmanager
def start_server(
    command: list[str], cwd: Path, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[RunningServer]:
    """`command` on a free loopback port; stopped by PID when the block ends. The address goes
    in the environment, read by `bentoml serve` (BENTOML_HOST, BENTOML_PORT) and by
    `scripts/serve.sh` (HOST, PORT)."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    # A home of its own (sharing the model and Bento stores): BentoML empties the Prometheus
    # directory under its home at start, which would reset another running server's metrics.
    home = log_dir / f"bentoml-home-{port}"
    home.mkdir()
    for store in ("models", "bentos"):
        shared = Path(os.environ["BENTOML_HOME"]) / store
        shared.mkdir(parents=True, exist_ok=True)
        (home / store).symlink_to(shared)
    address = {"HOST": "127.0.0.1", "PORT": str(port)}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            # Unbuffered, as in BentoML's image: log lines reach the file as they are written.
            env={
                **os.environ,
                "BENTOML_HOME": str(home),
                "PYTHONUNBUFFERED": "1",
                **address,
                **{f"BENTOML_{name}": value for name, value in address.items()},
                **(env or {}),
            },
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until_ready(running.url, process, log_path)
        yield running
    finally:
        if process.poll() is None:
            running.stop()


def read_answer(connection: socket.socket) -> bytes:
    """One HTTP/1.1 answer with a Content-Length body, read off a raw socket; returns its head."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += connection.recv(4096)
    return head.lower()


async def asgi_request(
    app: ASGIApp,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body_chunks: tuple[bytes, ...] = (b"",),
) -> tuple[int, dict[str, str], bytes]:
    """One request straight into an ASGI app: status, headers, body. Headers as a list may
    repeat a name."""
    header_items = headers.items() if isinstance(headers, dict) else headers or []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in header_items],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
    }
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": i < len(body_chunks) - 1}
        for i, chunk in enumerate(body_chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return (
        start["status"],
        {k.decode(): v.decode() for k, v in start.get("headers", [])},
        body,
    )


def fresh_session() -> requests.Session:
    """A keep-alive session that never retries: every failure is counted as it happened."""
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=0))
    return session


def predict_through_a_stop(
    url: str, stop: Callable[[], None], wait_stopped: Callable[[], None], clients: int = 32
) -> tuple[Counter[str], float]:
    """`clients` keep-alive clients predicting until the server is gone; `stop` after 2 s.
    Outcomes: `ok`, other statuses, `refused` (no connection: safe to retry elsewhere) and
    `lost` (a request written to a connection the server had accepted, then no answer).
    Returns them and the seconds from `stop` to the end of `wait_stopped`."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    gone = threading.Event()

    def client() -> None:
        session = fresh_session()
        while not gone.is_set():
            try:
                response = session.post(
                    f"{url}/predict",
                    json=example("predict"),
                    headers={"x-api-key": API_KEYS[0]},
                    timeout=30,
                )
                outcome = "ok" if response.status_code == 200 else str(response.status_code)
            except requests.ConnectionError as error:
                outcome = "refused" if "refused" in str(error) else "lost"
                session = fresh_session()
                time.sleep(0.05 if outcome == "refused" else 0)
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    started = time.monotonic()
    stop()
    wait_stopped()
    stopped_after = time.monotonic() - started
    time.sleep(0.5)
    gone.set()
    for thread in threads:
        thread.join(timeout=40)
    return outcomes, stopped_after


T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout_s: float) -> T:
    """The first truthy answer of `probe` within the time, else its last one."""
    deadline = time.monotonic() + timeout_s
    while not (answer := probe()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return answer


def records(server: RunningServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log_lines() if line.startswith("{")]


def logged(server: RunningServer, message: str) -> list[dict[str, Any]]:
    return [record for record in records(server) if record["message"] == message]


def workers(server: RunningServer) -> set[int]:
    """The live workers' pids: the children of `bentoml serve`, which is the supervisor."""
    return live_children(server.process.pid)


def ready_workers(server: RunningServer) -> set[int]:
    """The live workers that have logged their start-up line."""
    return workers(server) & {record["pid"] for record in logged(server, "service ready")}


def both_workers_ready(server: RunningServer) -> set[int]:
    ready = wait_for(lambda: len(ready_workers(server)) == 2, timeout_s=60)
    assert ready, server.log_path.read_text()[-4000:]
    return ready_workers(server)


@contextmanager
def bentoml_endpoints_only(client: Any) -> Iterator[None]:
    """Within it, the in-process service's fast path passes every request on, so `/predict` and
    `/batch_predict` reach the `@bentoml.api` methods through BentoML's routing and endpoint
    machinery. (A second app cannot be built in one process: its metrics would be registered
    twice.)"""
    from iris_bento.fast_path import FastPath

    layer = client.app.middleware_stack
    while not isinstance(layer, FastPath):
        layer = layer.app
    routes, layer.routes = layer.routes, {}
    try:
        yield
    finally:
        layer.routes = routes
