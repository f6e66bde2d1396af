"""Per-client metrics: requests by client and status, quota refusals, quota storage failures.

Label values come from the configured clients only (an unauthenticated request has no client
and is not counted here; BentoML's request metrics count it), so the series are bounded by
clients x statuses. As in `iris_bento.metrics`, a request only adds to a count in memory; a
thread writes the counts to prometheus_client once a second, one increment per series that
moved, and makes the metrics on its first pass (inside the worker, where BentoML has set the
multi-process directory).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

FLUSH_S: Final = 1.0

# name: (help, label names)
_METRICS: Final = {
    "iris_client_requests": (
        "Requests of each configured client, by status code.",
        ("client", "code"),
    ),
    "iris_quota_rejections": (
        "Requests refused with 429 because the client was over its quota (requests or rows).",
        ("client", "quota"),
    ),
    "iris_quota_storage_errors": (
        "Requests whose quota could not be checked because the quota storage (Redis) did not "
        "answer: served when quotas.fail_open, else refused with 503.",
        (),
    ),
}


class Tally:
    """Counts in memory, written by a background thread."""

    def __init__(self, flush_s: float = FLUSH_S) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, tuple[str, ...]], int] = {}
        self._flush_s = flush_s
        self._started = False
        self._counters: dict[str, Any] = {}

    def add(self, metric: str, *labels: str) -> None:
        key = (metric, labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
        if not self._started:
            self._start()

    def _start(self) -> None:
        self._started = True
        threading.Thread(target=self._flush_every, name="client-metrics", daemon=True).start()

    def _counter(self, metric: str) -> Any:
        if metric not in self._counters:
            from prometheus_client import Counter

            help_text, label_names = _METRICS[metric]
            self._counters[metric] = Counter(metric, help_text, label_names, registry=None)
        return self._counters[metric]

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        for (metric, labels), count in counts.items():
            counter = self._counter(metric)
            (counter.labels(*labels) if labels else counter).inc(count)

    def _flush_every(self) -> None:
        while True:
            time.sleep(self._flush_s)
            self.flush()


TALLY: Final = Tally()


def client_request(client: str, status: int) -> None:
    TALLY.add("iris_client_requests", client, str(status))


def quota_rejected(client: str, quota: str) -> None:
    TALLY.add("iris_quota_rejections", client, quota)


def quota_storage_error() -> None:
    TALLY.add("iris_quota_storage_errors")
