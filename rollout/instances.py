"""The service's instances for the drills: containers from the project's image where podman is
available, `bentoml serve` processes of a Bento otherwise.

Each instance listens on its own loopback port of the host network and runs one worker (the
machines the drills run on have two cores for two or three instances, HAProxy and the load).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

import psutil

ROOT = Path(__file__).resolve().parent.parent
# The container tier's podman storage and sandbox settings (scripts/container_smoke.sh), kept
# between runs so that a rebuild is warm (root's machine-wide scratch space, not a temporary file).
PODMAN_ROOT = Path(os.environ.get("IRIS_PODMAN_ROOT", "/var/tmp/iris-bento-podman"))  # noqa: S108
ONE_WORKER = json.dumps({"services": {"IrisClassifier": {"workers": 1}}})
# Longer than the drain (5 s) plus the slowest request's deadline (BentoML's 30 s).
STOP_GRACE_S = 45


def podman_env() -> dict[str, str]:
    """The environment podman needs here: the container tier's storage and settings."""
    return {
        **os.environ,
        "CONTAINERS_CONF": str(PODMAN_ROOT / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(PODMAN_ROOT / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(PODMAN_ROOT / "registries.conf"),
    }


def podman(*args: str, timeout: float = 120) -> str:
    """One podman command; its output. Raises with podman's error when it fails."""
    done = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:2])}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def containers_available() -> bool:
    """Whether podman and the container tier's settings are here."""
    return shutil.which("podman") is not None and (PODMAN_ROOT / "containers.conf").exists()


class Instance(Protocol):
    """One running copy of the service on `port`, serving `image` (a container image or a
    Bento tag)."""

    image: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None:
        """SIGTERM, as Kubernetes sends it; returns once the instance has exited."""

    def kill(self) -> None:
        """SIGKILL to the whole instance: a crash."""

    def restart(self) -> None:
        """Start again after a kill."""

    def remove(self) -> None:
        """Gone, whatever its state."""


class Container:
    """The image on the host network, read-only as the Kubernetes pod runs it."""

    def __init__(self, image: str, port: int, key: str, name: str) -> None:
        self.image, self.port, self.key, self.name = image, port, key, name

    def start(self) -> None:
        podman(
            "run", "--detach", "--name", self.name, "--network", "host",
            "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",  # noqa: S108
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--env", f"IRIS_API_KEYS={self.key}", "--env", f"PORT={self.port}",
            "--env", "BENTOML_HOST=127.0.0.1", "--env", f"BENTOML_CONFIG_OVERRIDES={ONE_WORKER}",
            self.image,
        )  # fmt: skip

    def stop(self) -> None:
        podman("stop", "--time", str(STOP_GRACE_S), self.name, timeout=STOP_GRACE_S + 30)

    def kill(self) -> None:
        podman("kill", "--signal", "KILL", self.name)
        podman("wait", self.name)

    def restart(self) -> None:
        podman("start", self.name)

    def remove(self) -> None:
        podman("rm", "--force", "--ignore", "--time", "10", self.name)


def packed_model(bento: str) -> str:
    """The tag of the model a Bento packs."""
    import bentoml

    return str(bentoml.get(bento).info.models[0].tag)


class Process:
    """`bentoml serve BENTO` as a subprocess."""

    def __init__(self, image: str, port: int, key: str, work_dir: Path) -> None:
        self.image, self.port, self.key = image, port, key
        self.log_path = work_dir / f"instance-{port}.log"
        # A home of its own sharing the stores: BentoML empties its home's Prometheus folder at
        # start, which would reset the metrics of another instance.
        self.home = work_dir / f"bentoml-home-{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        shared = Path(os.environ["BENTOML_HOME"])
        if not self.home.exists():
            self.home.mkdir(parents=True)
            for store in ("models", "bentos"):
                (self.home / store).symlink_to(shared / store)
        env = {
            **os.environ,
            "BENTOML_HOME": str(self.home),
            "BENTOML_CONFIG": str(ROOT / "configuration.yaml"),
            "BENTOML_CONFIG_OVERRIDES": ONE_WORKER,
            "BENTOML_HOST": "127.0.0.1",
            "BENTOML_PORT": str(self.port),
            "IRIS_API_KEYS": self.key,
            # The stores are shared: `latest` would be the newest model, not the Bento's own.
            "IRIS_MODEL_TAG": packed_model(self.image),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("bentoml")), "serve", self.image],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=STOP_GRACE_S)

    def kill(self) -> None:
        """The server and its workers at once (each worker runs in a session of its own)."""
        if self.process is not None and self.process.poll() is None:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
            for process in tree:
                process.send_signal(signal.SIGKILL)
            psutil.wait_procs(tree, timeout=10)
            self.process.wait()

    def restart(self) -> None:
        self.start()

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.kill()
