"""HAProxy in front of the replicas (deploy/haproxy/haproxy.cfg), and its runtime API.

The drills take instances in and out of the pool through the runtime API's stats socket, as an
endpoints controller does for a Kubernetes Service: `set server iris/s1 state drain` takes one out
before it gets SIGTERM; `ready` gives its slot back, where HAProxy's health checks on /readyz admit
the next instance only once it is ready.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
BACKEND = "iris"


def ensure_installed() -> None:
    """HAProxy from Debian when missing, by the project's own set-up (scripts/apt_install.sh)."""
    if shutil.which("haproxy") is None:
        subprocess.run(
            [str(ROOT / "scripts" / "apt_install.sh"), "haproxy"], check=True, timeout=900
        )


class HAProxy:
    """One HAProxy process for `servers` (host:port each, slots s1, s2, ...) on `bind`."""

    def __init__(self, bind: str, servers: list[str], work_dir: Path) -> None:
        self.bind = bind
        self.slots = {f"s{i}": address for i, address in enumerate(servers, start=1)}
        self.socket_path = work_dir / "haproxy.sock"
        self.log_path = work_dir / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which("haproxy")
        if executable is None:
            raise RuntimeError("haproxy is not installed: apt-get install haproxy")
        env = {
            **os.environ,
            "IRIS_LB_BIND": self.bind,
            "IRIS_LB_SOCKET": str(self.socket_path),
            **{f"IRIS_SERVER_{name[1:]}": address for name, address in self.slots.items()},
        }
        self.socket_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            # -db: in the foreground, stopped by its PID.
            self.process = subprocess.Popen(
                [executable, "-db", "-f", str(CONFIG)], env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def command(self, line: str) -> str:
        """One runtime API command; its whole answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def _stat(self) -> list[dict[str, str]]:
        """`show stat` of the backend: one row per slot, one for the backend (`BACKEND`)."""
        rows = csv.DictReader(self.command("show stat").lstrip("# ").splitlines())
        return [row for row in rows if row["pxname"] == BACKEND]

    def status(self) -> dict[str, str]:
        """Each slot's status: UP, DOWN, DRAIN, MAINT, `UP 1/2` while going down..."""
        return {row["svname"]: row["status"] for row in self._stat() if row["svname"] in self.slots}

    def retries(self) -> dict[str, int]:
        """The backend's retries (another try of a request) and redispatches (the try went to
        another instance) since start."""
        row = next(r for r in self._stat() if r["svname"] == "BACKEND")
        return {"retries": int(row["wretr"]), "redispatches": int(row["wredis"])}

    def set_state(self, slot: str, state: str) -> None:
        """`ready`, `drain` (no new requests) or `maint` (none at all, no checks)."""
        answer = self.command(f"set server {BACKEND}/{slot} state {state}").strip()
        if answer:
            raise RuntimeError(f"set server {slot} state {state}: {answer}")

    def wait_status(self, slot: str, wanted: str, timeout_s: float = 60) -> float:
        """Wait until `slot`'s status is `wanted`; the seconds it took."""
        started = time.monotonic()
        while (status := self.status()[slot]) != wanted:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{slot} still {status!r} after {timeout_s} s, not {wanted!r}")
            time.sleep(0.1)
        return time.monotonic() - started
