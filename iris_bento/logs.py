"""JSON-lines logging for the serving workers and for their supervisor."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter
from starlette.requests import ClientDisconnect

# BentoML's server configures these loggers' handlers (uvicorn's in the workers, circus's in the
# supervisor); the project's logger propagates to root.
_LOGGERS_WITH_HANDLERS = ("", "bentoml", "uvicorn.error", "circus")


def _not_a_client_error(record: logging.LogRecord) -> bool:
    """BentoML logs every invalid body, and every body cut off (a client that went away, or
    the 413 limit), as an ERROR with a traceback, the first holding the submitted values; the
    access line already records the request, and logs carry no feature values."""
    return not (
        record.exc_info and isinstance(record.exc_info[1], ValidationError | ClientDisconnect)
    )


def configure_json_logging() -> None:
    """Switch the process's log handlers to one JSON object per line; call once per worker, and
    once in the supervisor. Each line names its process: the workers and the supervisor share a
    stdout."""
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
        rename_fields={
            "asctime": "time",
            "levelname": "level",
            "name": "logger",
            "process": "pid",
        },
    )
    for name in _LOGGERS_WITH_HANDLERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
            # BentoML's trace filter decorates records for its text format and overwrites a
            # `request_id` field with its span id; the JSON lines carry the project's own id.
            for record_filter in list(handler.filters):
                handler.removeFilter(record_filter)
    logging.getLogger("bentoml._internal.server.http_app").addFilter(_not_a_client_error)
    logging.getLogger("iris_bento").setLevel(logging.INFO)


class RateLimitedWarning:
    """One WARNING line per `interval_s` at most for one kind of event, counting the events it
    stands for: a flood of bad clients must not become a flood of log lines."""

    def __init__(self, logger: logging.Logger, message: str, interval_s: float = 10.0) -> None:
        self._logger = logger
        self._message = message
        self._interval_s = interval_s
        self._last = -interval_s
        self._events = 0

    def warn(self, **fields: Any) -> None:
        """Count one event; log it, with the count since the last line, unless one was logged
        within the interval."""
        self._events += 1
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        self._logger.warning(self._message, extra={**fields, "events": self._events})
        self._last, self._events = now, 0
