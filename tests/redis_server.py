"""A real `redis-server` (Debian's package) on a free loopback port, for the Redis tier.

Installed by the project's own set-up (scripts/apt_install.sh) when missing; where it cannot be
installed the tier is skipped with one line, except in CI, where it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import ROOT, free_port

IN_CI = os.environ.get("CI", "").lower() == "true"


def redis_server_binary() -> str:
    """redis-server's path, installing Debian's package first when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    result = subprocess.run(
        [str(ROOT / "scripts" / "apt_install.sh"), "redis-server"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    found = shutil.which("redis-server")
    if found:
        return found
    reason = (result.stderr.strip() or "redis-server not found").splitlines()[-1]
    if IN_CI:
        pytest.fail(f"Redis tier: {reason}")
    pytest.skip(f"Redis tier: {reason}")


def ping(port: int) -> bool:
    """Whether a Redis answers PING on the port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process without persistence; `stop` and `start` again on the same port
    (to take Redis away in the middle of a load, and bring it back)."""

    def __init__(self, binary: str, log_dir: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log_path.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
