"""The two drills on a local stack: HAProxy in front of replicas of the service, under steady load.

Rollout: replace every instance, one at a time, by one of another image, as a Kubernetes rolling
update with `maxSurge: 1, maxUnavailable: 0` does. The backend has one slot more than there are
replicas (the surge): the new instance starts in the empty slot, HAProxy's health checks on
/readyz admit it, and only then is an old instance taken out of the pool (`drain`, no new
requests), sent SIGTERM and waited for; its slot is the next one's empty slot.

Crash: SIGKILL one instance; HAProxy retries what it had sent there on another one and its checks
take it out; then it starts again and rejoins the pool.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.haproxy import HAProxy
from rollout.instances import Instance
from rollout.load import SteadyLoad

# Starting an instance, and the image's model load, on a busy two-core machine.
READY_TIMEOUT_S = 120

# An instance of `image` on `port`, with API key `key`, named `name`.
Runtime = Callable[[str, int, str, str], Instance]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Stack:
    """HAProxy and the instance in each of its slots (None: an empty slot)."""

    haproxy: HAProxy
    runtime: Runtime
    key: str
    url: str
    prefix: str
    slots: dict[str, Instance | None]
    ports: dict[str, int]
    started: int = 0

    def launch(self, slot: str, image: str) -> Instance:
        """A new instance of `image` in `slot` (its port); HAProxy admits it once ready."""
        self.started += 1
        instance = self.runtime(image, self.ports[slot], self.key, f"{self.prefix}-{self.started}")
        instance.start()
        self.slots[slot] = instance
        return instance

    def empty_slot(self) -> str:
        return next(slot for slot, instance in self.slots.items() if instance is None)


@contextmanager
def stack(
    runtime: Runtime, image: str, replicas: int, work_dir: Path, prefix: str
) -> Iterator[Stack]:
    """HAProxy with `replicas` + 1 slots, `replicas` instances of `image` in the pool; all of it
    stopped and removed when the block ends."""
    ports = {f"s{i}": free_port() for i in range(1, replicas + 2)}
    bind = f"127.0.0.1:{free_port()}"
    haproxy = HAProxy(bind, [f"127.0.0.1:{port}" for port in ports.values()], work_dir)
    running = Stack(
        haproxy=haproxy,
        runtime=runtime,
        key=secrets.token_hex(16),
        url=f"http://{bind}",
        prefix=prefix,
        slots=dict.fromkeys(ports),
        ports=ports,
    )
    try:
        haproxy.start()
        for slot in list(ports)[:replicas]:
            running.launch(slot, image)
        for slot in list(ports)[:replicas]:
            haproxy.wait_status(slot, "UP", READY_TIMEOUT_S)
        yield running
    finally:
        for instance in running.slots.values():
            if instance is not None:
                instance.remove()
        haproxy.stop()


def replace(running: Stack, old_slot: str, image: str) -> dict[str, Any]:
    """One step of the rollout: the new instance in the empty slot, in the pool, then the old
    one out of the pool, stopped, and its slot empty. Timings of each part."""
    started = time.monotonic()
    new_slot = running.empty_slot()
    running.launch(new_slot, image)
    ready_s = running.haproxy.wait_status(new_slot, "UP", READY_TIMEOUT_S)
    old = running.slots[old_slot]
    if old is None:
        raise ValueError(f"no instance in {old_slot} to replace")
    running.haproxy.set_state(old_slot, "drain")
    out_of_pool = time.monotonic()
    old.stop()
    stop_s = time.monotonic() - out_of_pool
    old.remove()
    running.slots[old_slot] = None
    # The slot back to `ready`: empty, so its checks keep it DOWN until the next instance there
    # answers /readyz.
    running.haproxy.set_state(old_slot, "ready")
    running.haproxy.wait_status(old_slot, "DOWN", 10)
    return {
        "new_slot": new_slot,
        "old_slot": old_slot,
        "new_in_pool_s": round(ready_s, 2),
        "old_stopped_s": round(stop_s, 2),
        "step_s": round(time.monotonic() - started, 2),
    }


def roll(running: Stack, image: str) -> dict[str, Any]:
    """Every instance replaced by one of `image`, one at a time."""
    started = time.monotonic()
    old_slots = [slot for slot, instance in running.slots.items() if instance is not None]
    steps = [replace(running, slot, image) for slot in old_slots]
    return {"to": image, "steps": steps, "duration_s": round(time.monotonic() - started, 2)}


def crash(running: Stack, down_s: float) -> dict[str, Any]:
    """SIGKILL the first instance; `down_s` later, start it again; back in the pool."""
    slot, instance = next((s, i) for s, i in running.slots.items() if i is not None)
    started = time.monotonic()
    instance.kill()
    out_s = running.haproxy.wait_status(slot, "DOWN", 30)
    time.sleep(max(0.0, down_s - (time.monotonic() - started)))
    restarted = time.monotonic()
    instance.restart()
    back_s = running.haproxy.wait_status(slot, "UP", READY_TIMEOUT_S)
    return {
        "slot": slot,
        "out_of_pool_s": round(out_s, 2),
        "back_in_pool_s": round(time.monotonic() - restarted, 2),
        "rejoin_s": round(back_s, 2),
        "duration_s": round(time.monotonic() - started, 2),
    }


def rollout_drill(
    runtime: Runtime,
    images: tuple[str, str],
    work_dir: Path,
    *,
    replicas: int = 2,
    rate: float = 200,
    steady_s: float = 20,
    rollback: bool = False,
    prefix: str = "iris-rollout",
) -> dict[str, Any]:
    """From images[0] to images[1] under load (and back with `rollback`): phases `before`,
    `rollout`, `after` (`rollback`, `after-rollback`)."""
    old, new = images
    with stack(runtime, old, replicas, work_dir, prefix) as running:
        load = SteadyLoad(running.url, running.key, rate=rate)
        load.start("before")
        drills = []
        try:
            time.sleep(steady_s)
            load.phase("rollout")
            drills.append(roll(running, new))
            load.phase("after")
            time.sleep(steady_s / 2)
            if rollback:
                load.phase("rollback")
                drills.append(roll(running, old))
                load.phase("after-rollback")
                time.sleep(steady_s / 2)
        finally:
            phases = load.stop()
        retries = running.haproxy.retries()
    return {"drill": "rollout", "drills": drills, "phases": phases, "haproxy": retries}


def crash_drill(
    runtime: Runtime,
    image: str,
    work_dir: Path,
    *,
    replicas: int = 2,
    rate: float = 200,
    steady_s: float = 20,
    down_s: float = 5,
    prefix: str = "iris-crash",
) -> dict[str, Any]:
    """SIGKILL one instance under load: phases `before`, `crash` (kill to back in the pool),
    `after`."""
    with stack(runtime, image, replicas, work_dir, prefix) as running:
        load = SteadyLoad(running.url, running.key, rate=rate)
        load.start("before")
        try:
            time.sleep(steady_s)
            load.phase("crash")
            drill = crash(running, down_s)
            load.phase("after")
            time.sleep(steady_s / 2)
        finally:
            phases = load.stop()
        retries = running.haproxy.retries()
    return {"drill": "crash", "drills": [drill], "phases": phases, "haproxy": retries}
