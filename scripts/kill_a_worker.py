"""SIGKILL one worker of the `bentoml serve` that is this container's PID 1, and time how soon a
new worker takes its place. Runs inside the container, for scripts/container_smoke.sh:
    podman exec -i NAME python - < scripts/kill_a_worker.py
Prints `KILLED_PID NEW_PID SECONDS`; exits 1 when no new worker appears within 10 s.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

SUPERVISOR_PID = 1
TIMEOUT_S = 10


def workers() -> set[int]:
    """The supervisor's children that still run."""
    alive = set()
    for child in psutil.Process(SUPERVISOR_PID).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def main() -> int:
    before = workers()
    victim = min(before)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while time.monotonic() - killed < TIMEOUT_S:
        if new := workers() - before:
            print(victim, min(new), f"{time.monotonic() - killed:.3f}")
            return 0
        time.sleep(0.005)
    print(f"worker {victim} killed, no new worker after {TIMEOUT_S} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
