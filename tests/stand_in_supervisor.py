"""BentoML's arbiter as `bentoml serve` builds it, over two stand-in workers (a few lines of Python
instead of the service), for tests/test_supervisor.py: the supervisor's behaviour in a second
rather than a server start.

Usage: STAND_IN_READY_DIR=DIR python tests/stand_in_supervisor.py [--supervise]
       [--max-worker-deaths N] [--crash]
"""

from __future__ import annotations

import argparse

from bentoml._internal.log import configure_server_logging
from bentoml._internal.utils.circus import create_standalone_arbiter
from bentoml.serving import create_watcher

# Exits with status 3 on SIGUSR1; once set up, says so with a file named by its pid in
# $STAND_IN_READY_DIR, then sleeps until stopped.
SLEEPER = """
import os, pathlib, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(3))
pathlib.Path(os.environ["STAND_IN_READY_DIR"], str(os.getpid())).touch()
time.sleep(300)
"""
# A worker that cannot start.
CRASHER = "raise SystemExit(3)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--supervise", action="store_true", help="as the service's hook does")
    parser.add_argument("--max-worker-deaths", type=int, default=5)
    parser.add_argument("--crash", action="store_true", help="workers that exit at once")
    args = parser.parse_args()
    # Before the project's modules are imported, as in `bentoml serve`: BentoML's logging set-up
    # disables the loggers that exist already.
    configure_server_logging()
    from iris_bento.logs import configure_json_logging
    from iris_bento.settings import SupervisorSettings
    from iris_bento.supervisor import supervise_workers

    if args.supervise:
        configure_json_logging()
        supervise_workers(SupervisorSettings(max_worker_deaths=args.max_worker_deaths))
    watcher = create_watcher(
        name="service",
        args=["-c", CRASHER if args.crash else SLEEPER],
        numprocesses=2,
        use_sockets=False,
    )
    create_standalone_arbiter([watcher]).start()


if __name__ == "__main__":
    main()
