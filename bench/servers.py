"""The servers under test: how each is installed, started, checked for health and stopped.

Every peer runs from its own venv under bench/.venvs/ (pins in bench/requirements/); the
project runs exactly as `make serve` runs it.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import payloads

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENVS = BENCH / ".venvs"
REQUIREMENTS = BENCH / "requirements"
# uvicorn as the peers' notes found it fastest here, with two workers like every peer.
UVICORN = (
    *("--workers", "2", "--host", "127.0.0.1", "--port", "{port}"),
    *("--http", "httptools", "--loop", "uvloop", "--no-access-log"),
)
# MLServer's adaptive batching: up to 64 requests merged, waiting at most 5 ms for them.
MLSERVER_BATCH = {"max_batch_size": 64, "max_batch_time": 0.005}


@dataclass(frozen=True)
class Server:
    """One server under test. `argv` may name {bin} (its venv's bin), {port} and {run}.

    `protocol`: "contract" (the project's API), "v2" (MLServer's), "project-v2" (the project's
    V2 route) or "fixed" (the ceiling, which takes contract bodies and answers them all alike).
    """

    name: str
    label: str
    argv: tuple[str, ...]
    venv: str | None = None
    health: str = "/health"
    protocol: str = "contract"
    paths: dict[str, str] = field(
        default_factory=lambda: {"predict": "/predict", "batch": "/batch_predict"}
    )
    auth: bool = True
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    # A redis-server of its own, started before the server and stopped after it; its port
    # replaces {redis_port} in `env`.
    redis: bool = False

    @property
    def bin(self) -> Path:
        return VENVS / (self.venv or "") / "bin"

    @property
    def run_dir(self) -> Path:
        return VENVS / "run" / self.name


def _v2_paths() -> dict[str, str]:
    infer = f"/v2/models/{payloads.MLSERVER_MODEL}/infer"
    return {"predict": infer, "batch": infer}


PEERS = (
    Server(
        "bare-asgi",
        "bare ASGI (ceiling)",
        ("{bin}/uvicorn", "bench.peers.bare_asgi:app", "--lifespan", "off", *UVICORN),
        venv="asgi",
        protocol="fixed",
        note="fixed answer, HTTP only",
    ),
    Server(
        "fastapi",
        "FastAPI + uvicorn",
        ("{bin}/uvicorn", "bench.peers.fastapi_app:app", *UVICORN),
        venv="fastapi",
    ),
    Server(
        "flask",
        "Flask + gunicorn",
        (
            *("{bin}/gunicorn", "--workers", "2", "--worker-class", "sync"),
            *("--bind", "127.0.0.1:{port}", "bench.peers.flask_app:create_app()"),
        ),
        venv="flask",
    ),
    Server(
        "mlserver",
        "MLServer, batching",
        ("{bin}/mlserver", "start", "{run}"),
        venv="mlserver",
        health="/v2/health/ready",
        protocol="v2",
        paths=_v2_paths(),
        auth=False,
        note="no API-key check; batch body is a flat tensor without ids",
    ),
    Server(
        "bentoml",
        "BentoML, textbook",
        (
            *("{bin}/bentoml", "serve", "bench.peers.bentoml_service:IrisTextbook"),
            *("--host", "127.0.0.1", "--port", "{port}"),
        ),
        venv="bentoml",
    ),
)


def project(
    name: str, label: str, env: dict[str, str], note: str = "", redis: bool = False
) -> Server:
    """The project as `make serve` starts it, with extra environment for its variants."""
    return Server(
        name, label, ("make", "--no-print-directory", "serve"), env=env, note=note, redis=redis
    )


def project_v2(env: dict[str, str]) -> Server:
    """The project as `make serve` starts it, loaded through its Open Inference Protocol route
    with MLServer's bodies (its own tensor and output names)."""
    infer = "/v2/models/iris_clf/infer"
    return Server(
        "project-v2",
        "project, V2 route",
        ("make", "--no-print-directory", "serve"),
        env=env,
        protocol="project-v2",
        paths={"predict": infer, "batch": infer},
        note="the V2 body MLServer gets, with the project's names",
    )


def bentoml_ceiling() -> Server:
    """BentoML's request path alone (bench/peers/bentoml_ceiling.py), in the project's venv."""
    return Server(
        "bentoml-ceiling",
        "BentoML (ceiling)",
        (
            *(str(REPO / ".venv" / "bin" / "bentoml"), "serve"),
            *("bench.peers.bentoml_ceiling:BentoMLCeiling", "--host", "127.0.0.1"),
            *("--port", "{port}"),
        ),
        health="/readyz",
        protocol="fixed",
        env={"BENTOML_CONFIG": str(REPO / "configuration.yaml"), "BENTOML_DO_NOT_TRACK": "true"},
        note="fixed answer from `@bentoml.api`, configured as the project",
    )


def project_ready() -> bool:
    """Whether this checkout has the service that `make serve` runs."""
    return (REPO / "service.py").exists() and (REPO / "scripts" / "serve.sh").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peer_env(server: Server) -> dict[str, str]:
    """The caller's environment without the project's BentoML settings, plus the peer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENTOML_")}
    env.update(
        PYTHONPATH=str(REPO),
        BENCH_API_KEYS=payloads.API_KEY,
        BENCH_MODEL_PATH=str(VENVS / server.venv / "model.joblib") if server.venv else "",
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(server.run_dir / "bentoml-home"),
    )
    return env


def environment(server: Server, port: int) -> dict[str, str]:
    """The process environment a server starts with."""
    if server.venv is None:
        env = dict(os.environ, PORT=str(port), HOST="127.0.0.1", IRIS_API_KEYS=payloads.API_KEY)
    else:
        env = _peer_env(server)
    env.update(server.env)
    return env


def ensure_venv(name: str) -> Path:
    """Create or refresh bench/.venvs/NAME from its pinned requirements; return its python."""
    requirements = REQUIREMENTS / f"{name}.txt"
    venv = VENVS / name
    stamp = venv / ".requirements-sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        print(f"[bench] installing venv {name}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        stamp.write_text(digest)
    return venv / "bin" / "python"


def prepare(server: Server) -> None:
    """Install a peer's venv, fit its model, write its config files."""
    if server.venv is None:
        return
    python = ensure_venv(server.venv)
    server.run_dir.mkdir(parents=True, exist_ok=True)
    model = VENVS / server.venv / "model.joblib"
    if server.venv != "asgi" and not model.exists():
        env = _peer_env(server)
        subprocess.run([str(python), "-m", "bench.model", str(model)], check=True, env=env)
    if server.protocol == "v2":
        settings = {"debug": False, "parallel_workers": 2}
        model_settings = {
            "name": payloads.MLSERVER_MODEL,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(model), "version": "v1"},
            **MLSERVER_BATCH,
        }
        (server.run_dir / "settings.json").write_text(json.dumps(settings))
        (server.run_dir / "model-settings.json").write_text(json.dumps(model_settings))


def ensure_redis() -> None:
    """Install Debian's redis-server when it is missing (the harness runs as root on Debian)."""
    if shutil.which("redis-server"):
        return
    print("[bench] installing redis-server with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True)


def start_redis(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server without persistence on a free loopback port, answering PING."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not answer on port {port}")


@dataclass
class Running:
    """A started server: its process group leader, port and log (and its Redis, if any)."""

    server: Server
    process: subprocess.Popen[bytes]
    port: int
    started: float
    redis: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def start(server: Server, log: Path) -> Running:
    """Launch the server in its own process group, logging to `log`."""
    port = free_port()
    argv = [a.format(bin=server.bin, port=port, run=server.run_dir) for a in server.argv]
    env = environment(server, port)
    redis = None
    if server.redis:
        log.parent.mkdir(parents=True, exist_ok=True)
        redis, redis_port = start_redis(log.with_suffix(".redis.log"))
        env = {name: value.replace("{redis_port}", str(redis_port)) for name, value in env.items()}
    if server.protocol == "v2":
        env.update(
            MLSERVER_HTTP_PORT=str(port),
            MLSERVER_GRPC_PORT=str(free_port()),
            MLSERVER_METRICS_PORT=str(free_port()),
            MLSERVER_HOST="127.0.0.1",
        )
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        started = time.monotonic()
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Running(server, process, port, started, redis)


def wait_healthy(running: Running, timeout: float) -> float:
    """Seconds from launch to the first 200 on the health check; raise if it never comes."""
    url = running.url(running.server.health)
    deadline = running.started + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"{running.server.name} exited with {running.process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - running.started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{running.server.name}: no 200 from {url} within {timeout:.0f} s")


def stop(running: Running) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of its tree is left; then its
    Redis."""
    try:
        _stop_server(running)
    finally:
        if running.redis is not None:
            running.redis.terminate()
            running.redis.wait(timeout=10)


def _stop_server(running: Running) -> None:
    try:
        tree = [psutil.Process(running.process.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        os.killpg(running.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _, alive = psutil.wait_procs(tree, timeout=15)
    for process in alive:
        process.kill()
    running.process.wait(timeout=5)
