"""Steady load for the drills: a fixed request rate over keep-alive connections, counted by phase.

Open loop: requests leave on a fixed schedule (the README's `/predict` and `/batch_predict`
payloads, three to one), whatever the answers do, with at most `connections` in flight; a request
that would exceed that waits, and the report says how far the rate fell short. Every request
counts in the phase that was current when it left: answered 200, failed (another status), or a
connection error (no answer at all). Latency runs from send to the whole answer read.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# One /batch_predict for every three /predict.
MIX = ("predict", "predict", "predict", "batch_predict")


@dataclass
class Phase:
    """What the requests sent during one phase of a drill got back."""

    name: str
    started: float
    ended: float | None = None
    sent: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    # The first answer of each failed status, to tell HAProxy's own errors from the service's.
    failure_samples: dict[str, str] = field(default_factory=dict)
    connection_errors: Counter[str] = field(default_factory=Counter)
    model_versions: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    # The machine's 1-minute load average as the phase ended: other jobs on a shared machine
    # show in the latencies, and here.
    load_average: float | None = None

    def end(self) -> None:
        self.ended = time.monotonic()
        self.load_average = round(os.getloadavg()[0], 2)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_ms)
        duration = (self.ended or time.monotonic()) - self.started

        def quantile(q: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

        return {
            "phase": self.name,
            "duration_s": round(duration, 2),
            "sent": self.sent,
            "ok": self.ok,
            "failed": sum(self.failed.values()),
            "failed_by_status": dict(self.failed),
            "failure_samples": self.failure_samples,
            "connection_errors": sum(self.connection_errors.values()),
            "connection_errors_by_kind": dict(self.connection_errors),
            "rate_per_s": round(self.sent / duration, 1) if duration > 0 else None,
            "model_versions": dict(self.model_versions),
            "p50_ms": quantile(0.50),
            "p99_ms": quantile(0.99),
            "max_ms": quantile(1.0),
            "load_average": self.load_average,
        }


def _versions(route: str, body: dict[str, Any]) -> list[str]:
    """The model_version of each prediction in an answer."""
    if route == "predict":
        return [body["model_version"]]
    return [result["model_version"] for result in body["results"]]


class SteadyLoad:
    """`rate` requests per second to `url` from a thread of its own, until `stop()`."""

    def __init__(self, url: str, key: str, rate: float = 200, connections: int = 64) -> None:
        self.url = url.rstrip("/")
        self.headers = {"x-api-key": key, "content-type": "application/json"}
        self.rate = rate
        self.connections = connections
        self.bodies = {
            "predict": (EXAMPLES / "predict.json").read_bytes(),
            "batch_predict": (EXAMPLES / "batch_predict.json").read_bytes(),
        }
        self.phases: list[Phase] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, phase: str) -> None:
        self.phases.append(Phase(phase, time.monotonic()))
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()

    def phase(self, name: str) -> None:
        """Requests sent from now on count in phase `name`."""
        self.phases[-1].end()
        self.phases.append(Phase(name, self.phases[-1].ended or time.monotonic()))

    def stop(self) -> list[dict[str, Any]]:
        """Stop sending, wait for the answers in flight; each phase's summary."""
        self._stopping.set()
        self.phases[-1].end()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return [phase.summary() for phase in self.phases]

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.connections)
        connector = aiohttp.TCPConnector(limit=self.connections)
        timeout = aiohttp.ClientTimeout(total=60)
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            start, n = time.monotonic(), 0
            while not self._stopping.is_set():
                delay = start + n / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await slots.acquire()
                route = MIX[n % len(MIX)]
                task = asyncio.create_task(self._one(session, route, self.phases[-1], slots))
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
            await asyncio.gather(*pending)

    async def _one(
        self, session: aiohttp.ClientSession, route: str, phase: Phase, slots: asyncio.Semaphore
    ) -> None:
        phase.sent += 1
        sent = time.monotonic()
        try:
            async with session.post(
                f"{self.url}/{route}", data=self.bodies[route], headers=self.headers
            ) as response:
                raw = await response.read()
            latency_ms = (time.monotonic() - sent) * 1000
            if response.status != 200:
                phase.failed[str(response.status)] += 1
                phase.failure_samples.setdefault(
                    str(response.status), raw[:300].decode(errors="replace")
                )
                return
            phase.ok += 1
            phase.latencies_ms.append(latency_ms)
            phase.model_versions.update(_versions(route, json.loads(raw)))
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            phase.connection_errors[type(error).__name__] += 1
        finally:
            slots.release()
