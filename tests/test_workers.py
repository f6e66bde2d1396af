"""Workers that die, on the real server: `bentoml serve` as a subprocess, as `make serve` runs it
and as BentoML's image runs it (BENTOML_CONTAINERIZED=true), under light load on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest
import requests
from helpers import (
    API_KEYS,
    ROOT,
    RunningServer,
    bentoml_serve,
    both_workers_ready,
    example,
    logged,
    ready_workers,
    records,
    start_server,
    wait_for,
    workers,
)

pytestmark = pytest.mark.server

AUTH = {"x-api-key": API_KEYS[0]}
CLIENTS = 4
# A worker's connections close a moment after the SIGKILL is sent: a request sent within this of
# the kill may still have gone to the dying worker.
KILL_TAKES_S = 0.1
# The goal: a dead worker's replacement is started within this.
REPLACED_WITHIN_S = 2.0


def readyz(url: str) -> int | str:
    """/readyz on a connection of its own (a pooled one could belong to a dead worker)."""
    try:
        return requests.get(f"{url}/readyz", timeout=5).status_code
    except requests.RequestException as error:
        return type(error).__name__


class Traffic:
    """CLIENTS keep-alive clients sending /predict, and /readyz probed every 0.1 s, in threads,
    for the length of a `with` block: when each request was sent, and how it ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = threading.Event()
        self.failures: list[tuple[float, str]] = []
        self.answered: list[float] = []
        self.probes: list[tuple[float, int | str]] = []
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self.probe))

    def client(self) -> None:
        with requests.Session() as session:
            while not self.done.is_set():
                sent = time.monotonic()
                try:
                    response = session.post(
                        f"{self.url}/predict", json=example("predict"), headers=AUTH, timeout=10
                    )
                    outcome = "ok" if response.status_code == 200 else str(response.status_code)
                except requests.RequestException as error:
                    outcome = type(error).__name__
                if outcome == "ok":
                    self.answered.append(sent)
                else:
                    self.failures.append((sent, outcome))
                time.sleep(0.01)

    def probe(self) -> None:
        while not self.done.is_set():
            sent = time.monotonic()
            self.probes.append((sent, readyz(self.url)))
            time.sleep(0.1)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        time.sleep(1)
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=15)


@pytest.fixture(
    scope="module", params=[False, True], ids=["bentoml-serve", "BENTOML_CONTAINERIZED"]
)
def supervised(
    request: pytest.FixtureRequest, model_tag: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The real server, as `make serve` runs it or as the image does."""
    env = {"BENTOML_CONTAINERIZED": "true"} if request.param else {}
    with start_server(
        bentoml_serve("service:IrisClassifier"),
        cwd=ROOT,
        log_dir=tmp_path_factory.mktemp("workers"),
        env=env,
    ) as running:
        yield running


def model_info_pids(server: RunningServer) -> set[int]:
    """The workers `iris_model_info` has a series for."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return {int(pid) for pid in re.findall(r'^iris_model_info\{.*pid="(\d+)"', text, re.M)}


def test_a_killed_worker_is_replaced_at_once(supervised: RunningServer) -> None:
    before = both_workers_ready(supervised)
    victim = min(before)
    with Traffic(supervised.url) as traffic:
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: workers(supervised) - before, timeout_s=10)
        spawned_s = time.monotonic() - killed
        assert wait_for(lambda: new <= ready_workers(supervised), timeout_s=30), "never ready"
        ready_s = time.monotonic() - killed
    figures = (
        f"new pid after {spawned_s:.3f} s, ready after {ready_s:.2f} s; "
        f"{len(traffic.answered)} answered, lost {traffic.failures}"
    )
    print(figures)  # in pytest's captured output

    assert len(new) == 1
    assert spawned_s < REPLACED_WITHIN_S, figures
    # Lost: only requests sent before the kill, so in flight on the dead worker.
    assert all(sent < killed + KILL_TAKES_S for sent, _ in traffic.failures), traffic.failures
    assert len(traffic.failures) <= CLIENTS, traffic.failures
    # The other worker answered every probe sent after the kill.
    probes = [status for sent, status in traffic.probes if sent > killed + KILL_TAKES_S]
    assert probes
    assert set(probes) == {200}
    assert any(sent > killed + ready_s for sent in traffic.answered)

    died = wait_for(lambda: logged(supervised, "worker died"), timeout_s=5)
    replaced = logged(supervised, "worker replaced")
    assert [(r["level"], r["worker_pid"], r["signal"]) for r in died] == [
        ("WARNING", victim, "SIGKILL")
    ]
    assert [(r["level"], r["worker_pid"], r["replaced_pid"]) for r in replaced] == [
        ("WARNING", *new, victim)
    ]
    assert replaced[0]["seconds"] < REPLACED_WITHIN_S
    assert {r["pid"] for r in died + replaced} == {supervised.process.pid}
    # /metrics shows the live workers only: the dead one's series is gone (IrisWorkerDied).
    assert model_info_pids(supervised) == workers(supervised)


def test_both_workers_killed_are_replaced(supervised: RunningServer) -> None:
    before = both_workers_ready(supervised)
    deaths_before = len(logged(supervised, "worker died"))
    with Traffic(supervised.url) as traffic:
        killed = time.monotonic()
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: len(workers(supervised) - before) == 2, timeout_s=10)
        spawned_s = time.monotonic() - killed
        assert new, f"not replaced: {workers(supervised)}"
        assert wait_for(lambda: readyz(supervised.url) == 200, timeout_s=30)
        ready_s = time.monotonic() - killed

    figures = (
        f"new pids after {spawned_s:.3f} s, /readyz 200 after {ready_s:.2f} s; "
        f"{len(traffic.answered)} answered, lost {traffic.failures}"
    )
    print(figures)
    assert spawned_s < REPLACED_WITHIN_S, figures
    assert supervised.process.poll() is None, "the server is still running"
    # New connections waited in the supervisor's backlog meanwhile: only requests in flight
    # on the dead workers were lost, and every probe sent after the kill was answered 200.
    assert all(sent < killed + KILL_TAKES_S for sent, _ in traffic.failures), traffic.failures
    assert len(traffic.failures) <= CLIENTS, traffic.failures
    probes = [status for sent, status in traffic.probes if sent > killed + KILL_TAKES_S]
    assert probes
    assert set(probes) == {200}, traffic.probes
    assert any(sent > killed + ready_s for sent in traffic.answered)
    died = logged(supervised, "worker died")[deaths_before:]
    replaced = logged(supervised, "worker replaced")[deaths_before:]
    assert {(r["worker_pid"], r["signal"]) for r in died} == {(pid, "SIGKILL") for pid in before}
    assert {r["replaced_pid"] for r in replaced} == before
    assert {r["worker_pid"] for r in replaced} == workers(supervised)


def test_the_supervisors_lines_are_json(supervised: RunningServer) -> None:
    started = [
        record
        for record in records(supervised)
        if record["message"].startswith("Starting production HTTP BentoServer")
    ]
    assert [(r["pid"], r["level"]) for r in started] == [(supervised.process.pid, "INFO")]
    # BentoML's text lines of the supervisor (`[cli]`): only those printed before it loads the
    # service, so before any of the project's code runs.
    text = [line for line in supervised.log_lines() if "[cli]" in line]
    assert text
    assert all("Applying user config override" in line for line in text), text


def test_a_stop_after_replacements_is_clean(supervised: RunningServer) -> None:
    deaths = len(logged(supervised, "worker died"))
    assert supervised.stop() == 0
    assert len(logged(supervised, "worker died")) == deaths, "a stop is not a death"
    with pytest.raises(ProcessLookupError):
        os.killpg(supervised.process.pid, 0)


def test_workers_that_keep_dying_stop_the_server(model_tag: str, tmp_path: Any) -> None:
    """Past `supervisor.max_worker_deaths` (1 here) within the window, the server exits 1."""
    bound = {"services": {"IrisClassifier": {"iris": {"supervisor": {"max_worker_deaths": 1}}}}}
    with start_server(
        bentoml_serve("service:IrisClassifier"),
        cwd=ROOT,
        log_dir=tmp_path,
        env={"BENTOML_CONFIG_OVERRIDES": json.dumps(bound)},
    ) as running:
        first = both_workers_ready(running)
        os.kill(min(first), signal.SIGKILL)
        replacement = wait_for(lambda: ready_workers(running) - first, timeout_s=60)
        assert replacement, running.log_path.read_text()[-4000:]
        os.kill(replacement.pop(), signal.SIGKILL)
        exit_code = running.process.wait(timeout=30)
    assert exit_code == 1
    errors = [record for record in records(running) if record["level"] == "ERROR"]
    assert [(r["logger"], r["pid"]) for r in errors] == [
        ("iris_bento.supervisor", running.process.pid)
    ]
    assert "2 workers died within 60 s" in errors[0]["message"]
    log = running.log_path.read_text()
    assert "`serve` failed: 2 workers died" in log
    assert "Traceback" not in log
    with pytest.raises(ProcessLookupError):
        os.killpg(running.process.pid, 0)
