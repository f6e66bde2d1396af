"""The supervisor's handling of dead workers (iris_bento/supervisor.py), on BentoML's own arbiter
over stand-in workers (tests/stand_in_supervisor.py). The first tests hold BentoML and circus to
the behaviour the supervisor corrects: when one fails, an upgrade changed it, and the module may
have to change or go. tests/test_workers.py checks the same on the real server."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import psutil
import pytest
from bentoml._internal.utils.circus import Arbiter
from helpers import ROOT, live_children

from iris_bento.settings import SupervisorSettings
from iris_bento.supervisor import WorkerSupervisor

STAND_IN = ROOT / "tests" / "stand_in_supervisor.py"
T = TypeVar("T")


@dataclass
class StandIn:
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_dir: Path

    def workers(self) -> set[int]:
        """The live workers' pids."""
        return live_children(self.process.pid)

    def ready_workers(self) -> set[int]:
        """The live workers that have set themselves up (and the arbiter has finished starting
        them: it refuses a SIGTERM while it starts workers, and loses it)."""
        return self.workers() & {int(path.name) for path in self.ready_dir.iterdir()}

    def records(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def messages(self, message: str) -> list[dict[str, Any]]:
        return [record for record in self.records() if record["message"] == message]


def wait_for(probe: Callable[[], T], timeout_s: float) -> T:
    """The first truthy answer of `probe` within the time, else its last one."""
    deadline = time.monotonic() + timeout_s
    while not (answer := probe()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return answer


@contextmanager
def stand_in(log_dir: Path, *args: str, containerized: bool = False) -> Iterator[StandIn]:
    """The stand-in supervisor with two workers, stopped by PID when the block ends."""
    env = {key: value for key, value in os.environ.items() if key != "BENTOML_CONTAINERIZED"}
    ready_dir = log_dir / "ready"
    ready_dir.mkdir()
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", STAND_IN_READY_DIR=str(ready_dir))
    if containerized:
        env["BENTOML_CONTAINERIZED"] = "true"
    log_path = log_dir / "supervisor.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(STAND_IN), *args],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = StandIn(process, log_path, ready_dir)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def two_workers(running: StandIn) -> set[int]:
    """Once both workers are set up, their pids."""
    ready = wait_for(lambda: len(running.ready_workers()) == 2, timeout_s=30)
    assert ready, running.log_path.read_text()
    return running.ready_workers()


def test_bentoml_arbiter_has_no_initialize_of_its_own() -> None:
    """The supervisor gives BentoML's arbiter an `initialize` that calls circus's: when this fails,
    BentoML has one of its own, which the supervisor would hide."""
    assert "initialize" not in vars(Arbiter)


@pytest.mark.parametrize("containerized", [False, True], ids=["serve", "containerized"])
def test_bentoml_alone_leaves_a_dead_worker_dead(tmp_path: Path, containerized: bool) -> None:
    """When this fails, BentoML replaces dead workers within seconds itself (in a container too):
    iris_bento/supervisor.py may go. As shipped, circus looks 10 s after it starts, then every
    10 s, and in a container not at all."""
    with stand_in(tmp_path, containerized=containerized) as running:
        workers = two_workers(running)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        time.sleep(3)
        assert running.workers() == workers - {victim}
        assert running.records() == [], "BentoML's arbiter logs nothing, in JSON or not"


@pytest.mark.parametrize("containerized", [False, True], ids=["serve", "containerized"])
def test_a_dead_worker_is_replaced_at_once_and_logged(tmp_path: Path, containerized: bool) -> None:
    with stand_in(tmp_path, "--supervise", containerized=containerized) as running:
        workers = two_workers(running)
        victim = min(workers)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: running.workers() - workers, timeout_s=10)
        took = time.monotonic() - killed
        replaced = wait_for(lambda: running.messages("worker replaced"), timeout_s=5)
        died = running.messages("worker died")
        lines = running.log_path.read_text().splitlines()
    assert len(new) == 1, "one new worker"
    assert took < 2
    assert len(died) == 1
    assert died[0] | {"time": None} == {
        "time": None,
        "level": "WARNING",
        "logger": "iris_bento.supervisor",
        "pid": running.process.pid,
        "message": "worker died",
        "worker_pid": victim,
        "exit_code": None,
        "signal": "SIGKILL",
        "deaths_in_window": 1,
    }
    assert len(replaced) == 1
    assert replaced[0]["level"] == "WARNING"
    assert (replaced[0]["worker_pid"], replaced[0]["replaced_pid"]) == (new.pop(), victim)
    assert 0 <= replaced[0]["seconds"] < 2
    assert all(line.startswith("{") for line in lines), "the supervisor logs JSON lines only"


def test_workers_killed_together_are_each_logged(tmp_path: Path) -> None:
    """circus replaces a worker that died while it was reaping another without reaping it, and
    so without its hook: the supervisor still logs how each one ended."""
    killed: set[int] = set()
    with stand_in(tmp_path, "--supervise", "--max-worker-deaths", "100") as running:
        for _ in range(5):
            workers = two_workers(running)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed.update(workers)
            gone = wait_for(lambda dead=workers: not running.workers() & dead, timeout_s=10)
            assert gone, running.workers()
        replaced = wait_for(lambda: len(running.messages("worker replaced")) == 10, timeout_s=10)
        died = running.messages("worker died")
    assert replaced
    assert sorted((r["worker_pid"], r["signal"]) for r in died) == [
        (pid, "SIGKILL") for pid in sorted(killed)
    ]
    assert {r["replaced_pid"] for r in running.messages("worker replaced")} == killed


def test_a_death_circus_did_not_reap_is_read_and_left_to_circus(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The case above, made certain: a dead worker that circus has not reaped, but dropped."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher = SimpleNamespace(name="service", env={}, is_stopping=lambda: False)
    supervisor = WorkerSupervisor(SimpleNamespace(_stopping=False), SupervisorSettings())
    supervisor.alive[child.pid] = watcher  # type: ignore[assignment]
    child.kill()
    assert wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 5)
    with caplog.at_level(logging.WARNING, logger="iris_bento.supervisor"):
        supervisor.look_for_unreaped_deaths()
    logged = [(r.message, r.worker_pid, r.signal) for r in caplog.records]  # type: ignore[attr-defined]
    assert logged == [("worker died", child.pid, "SIGKILL")]
    assert child.wait(timeout=5) == -signal.SIGKILL, "the zombie is left for circus to reap"


def test_an_exit_status_is_logged(tmp_path: Path) -> None:
    with stand_in(tmp_path, "--supervise") as running:
        victim = min(two_workers(running))
        os.kill(victim, signal.SIGUSR1)  # the stand-in exits with status 3
        died = wait_for(lambda: running.messages("worker died"), timeout_s=10)
    assert (died[0]["worker_pid"], died[0]["exit_code"], died[0]["signal"]) == (victim, 3, None)


def test_workers_that_cannot_start_stop_the_supervisor(tmp_path: Path) -> None:
    with stand_in(tmp_path, "--supervise", "--crash", "--max-worker-deaths", "3") as running:
        exit_code = running.process.wait(timeout=30)
    assert exit_code != 0
    died = running.messages("worker died")
    assert len(died) >= 4
    assert {record["exit_code"] for record in died} == {3}
    stopping = [record for record in running.records() if record["level"] == "ERROR"]
    assert len(stopping) == 1
    assert "stopping the server" in stopping[0]["message"]
    assert "WorkersKeepDying" in running.log_path.read_text()
    with pytest.raises(ProcessLookupError):
        os.killpg(running.process.pid, 0)


def test_a_stop_is_no_death(tmp_path: Path) -> None:
    with stand_in(tmp_path, "--supervise") as running:
        two_workers(running)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0
    assert running.messages("worker died") == []
    with pytest.raises(ProcessLookupError):
        os.killpg(running.process.pid, 0)
