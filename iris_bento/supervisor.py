"""Dead workers replaced at once, and said so, by `bentoml serve`'s supervisor (BentoML 1.4.40,
circus 0.18.3).

`bentoml serve` is a circus arbiter that owns the listening socket and runs one process per
worker. As shipped it fails an operator in two ways:
- it looks at its workers only every 10 s (`check_delay`, `bentoml/_internal/utils/circus`), so a
  dead worker is replaced 0 to 10 s later, and nothing is logged either way;
- with `BENTOML_CONTAINERIZED=true`, which BentoML's images set, its workers are created with
  `respawn=False` (`bentoml/serving.py`): a dead worker is never replaced, the others keep
  `/readyz` at 200 at reduced capacity, and when the last one dies the supervisor stops with a
  traceback.

`supervise_workers`, called by the service's deployment hook before the arbiter exists, gives
BentoML's arbiter an `initialize` that runs circus's own, then makes every watcher respawn, logs
each death and replacement through circus's watcher hooks (`after_reap`, `after_spawn`), and runs
circus's periodic check (`manage_watchers`: reap, then respawn) as soon as SIGCHLD reports a child
that exited. Replacing one worker costs its start-up (under a second here) and the requests in
flight on it; the socket stays open in the supervisor, so new connections wait in its backlog even
when every worker is dead. Failing the container instead would also cost the requests in flight on
the other workers, and a whole server start.

A worker that cannot start (a broken model, a bad release) would die and be replaced forever:
past `supervisor.max_worker_deaths` deaths within `supervisor.window_s`, the server stops and exits
non-zero, so that the orchestrator restarts it and shows the crash loop (Kubernetes backs off and
reports `CrashLoopBackOff`, as systemd's start limit stops a unit).

circus is imported here only, and this module only by the supervisor: workers never load it.
tests/test_supervisor.py fails when BentoML or circus change what this relies on.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections import defaultdict, deque
from collections.abc import Callable
from functools import partialmethod
from typing import Any

from bentoml._internal.utils.circus import Arbiter
from bentoml.exceptions import BentoMLException
from circus.arbiter import Arbiter as CircusArbiter
from circus.watcher import Watcher
from tornado.concurrent import Future

from iris_bento.lifecycle import close_listener_after
from iris_bento.metrics import forget_worker
from iris_bento.settings import SupervisorSettings

log = logging.getLogger("iris_bento.supervisor")

# circus runs one arbiter command at a time and refuses the others: how soon to try again.
_BUSY_RETRY_S = 0.05


class WorkersKeepDying(BentoMLException):
    """The supervisor's exit when workers die faster than the bound allows; BentoML's CLI prints
    it as one line and exits 1."""


class WorkerSupervisor:
    """Replaces dead workers as soon as the kernel reports them; logs each death and replacement;
    stops the server when workers keep dying."""

    def __init__(self, arbiter: Arbiter, settings: SupervisorSettings) -> None:
        self.arbiter = arbiter
        self.settings = settings
        # The workers started and not yet seen dead, with their watchers.
        self.alive: dict[int, Watcher] = {}
        self.deaths: deque[float] = deque()
        # Per watcher, the deaths not yet replaced: (pid, when), oldest first.
        self.unreplaced: defaultdict[str, deque[tuple[int, float]]] = defaultdict(deque)
        # Set once workers have died too often: no more respawns, one stop.
        self.giving_up = False

    def attach(self) -> None:
        """Before the workers start: respawn, hooks, a SIGCHLD handler on the arbiter's loop."""
        for watcher in self.arbiter.watchers:
            watcher.respawn = True
            # As circus's `hooks` option resolves them; a failing hook is logged and ignored.
            hooks = {"after_reap": self.worker_reaped, "after_spawn": self.worker_started}
            watcher._resolve_hooks({name: (hook, True) for name, hook in hooks.items()})
        self.arbiter.loop.asyncio_loop.add_signal_handler(signal.SIGCHLD, self.child_exited)

    def child_exited(self) -> None:
        """SIGCHLD: circus's periodic check, now. It reaps (the hooks log), then respawns."""
        if not self.giving_up:
            self._when_free(self.arbiter.manage_watchers)

    def worker_reaped(
        self, watcher: Watcher, process_pid: int, exit_code: int | None, **_: Any
    ) -> bool:
        """circus's `after_reap` hook; circus reports a death by signal N as exit code -N."""
        if process_pid in self.alive:
            if exit_code is not None and exit_code < 0:
                self.worker_died(process_pid, exit_code=None, killed_by=-exit_code)
            else:
                self.worker_died(process_pid, exit_code=exit_code, killed_by=None)
        return True

    def worker_started(self, watcher: Watcher, pid: int, **_: Any) -> bool:
        """circus's `after_spawn` hook: track the worker, and log the replacement of a dead one.
        True: keep it."""
        if watcher.is_active():  # a replacement, not the watcher's start
            self.look_for_unreaped_deaths()
        self.alive[pid] = watcher
        if self.unreplaced[watcher.name]:
            dead_pid, died = self.unreplaced[watcher.name].popleft()
            log.warning(
                "worker replaced",
                extra={
                    "worker_pid": pid,
                    "replaced_pid": dead_pid,
                    "seconds": round(time.monotonic() - died, 3),
                },
            )
        return True

    def look_for_unreaped_deaths(self) -> None:
        """Workers circus dropped without its `after_reap` hook: it reaps first, then drops the
        zombies it finds, so a worker that dies in between (two killed together, say) is
        replaced without being reaped. Read how each ended, leaving the zombie to circus."""
        for pid in list(self.alive):
            try:
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped, but not by circus's watcher: how is lost
                self.worker_died(pid, exit_code=None, killed_by=None)
                continue
            if exited is None:
                continue
            if exited.si_code == os.CLD_EXITED:
                self.worker_died(pid, exit_code=exited.si_status, killed_by=None)
            else:
                self.worker_died(pid, exit_code=None, killed_by=exited.si_status)

    def worker_died(self, pid: int, exit_code: int | None, killed_by: int | None) -> None:
        """Log a death the arbiter did not ask for, and count it against the bound."""
        watcher = self.alive.pop(pid)
        forget_worker(pid, (watcher.env or {}).get("PROMETHEUS_MULTIPROC_DIR"))
        if watcher.is_stopping() or self.arbiter._stopping:
            return
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths[0] < now - self.settings.window_s:
            self.deaths.popleft()
        self.unreplaced[watcher.name].append((pid, now))
        log.warning(
            "worker died",
            extra={
                "worker_pid": pid,
                "exit_code": exit_code,
                "signal": None if killed_by is None else _signal_name(killed_by),
                "deaths_in_window": len(self.deaths),
            },
        )
        if len(self.deaths) > self.settings.max_worker_deaths and not self.giving_up:
            self._stop_server()

    def _stop_server(self) -> None:
        self.giving_up = True
        message = (
            f"{len(self.deaths)} workers died within {self.settings.window_s:g} s "
            f"(supervisor.max_worker_deaths is {self.settings.max_worker_deaths}): "
            "stopping the server"
        )
        log.error(message)
        # circus re-raises it once stopped; `bentoml serve` then exits 1.
        self.arbiter._exception = WorkersKeepDying(message)
        self._when_free(self.arbiter.stop)

    def _when_free(self, command: Callable[[], Future[Any]]) -> None:
        """Run an arbiter command (a coroutine) once no other one runs, unless it is stopping."""
        if self.arbiter._stopping:
            return
        if self.arbiter._exclusive_running_command is not None:
            self.arbiter.loop.call_later(_BUSY_RETRY_S, self._when_free, command)
            return
        # The loop logs what the command raises.
        self.arbiter.loop.add_future(command(), Future.result)


def _signal_name(number: int) -> str:
    """SIGKILL for 9; real-time signals have no name of their own."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


class PortInUse(BentoMLException):
    """The listening address is taken; BentoML's CLI prints it as one line and exits 1, where
    circus's own error is a 50-line traceback."""


def _not_said_by_port_in_use(record: logging.LogRecord) -> bool:
    """Drops circus's "Could not bind" line: `PortInUse` says it, with what to do."""
    return not str(record.msg).startswith("Could not bind")


def _initialize_and_supervise(
    arbiter: Arbiter, settings: SupervisorSettings, drain_s: float
) -> None:
    """circus's `Arbiter.initialize` (BentoML's arbiter has none of its own; it binds the
    listening socket), then supervision, and the stop in order of `iris_bento.lifecycle`."""
    try:
        CircusArbiter.initialize(arbiter)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        taken = ", ".join(f"{sock.host}:{sock.port}" for sock in arbiter.sockets.values())
        raise PortInUse(
            f"{taken} is already in use: stop what listens there, or serve on another port "
            "(make serve PORT=..., bentoml serve --port ...)"
        ) from None
    WorkerSupervisor(arbiter, settings).attach()
    for watcher in arbiter.watchers:
        watcher._resolve_hook("before_stop", close_listener_after(drain_s), ignore_failure=True)


def supervise_workers(settings: SupervisorSettings, drain_s: float = 0.0) -> None:
    """Make BentoML's arbiter supervise its workers so, and close its listening socket
    `drain_s` after a stop begins; call before it starts (idempotent)."""
    Arbiter.initialize = partialmethod(  # type: ignore[method-assign]
        _initialize_and_supervise, settings=settings, drain_s=drain_s
    )
    logging.getLogger("circus").addFilter(_not_said_by_port_in_use)
