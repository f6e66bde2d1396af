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
    logging.getLogger("uvicorn.error").addFilter(
        _RateLimitedMessage("Invalid HTTP request received.")
    )
    # BentoML gives these loggers a handler and lets them propagate to root's, the same handler
    # again: every line would be written twice.
    for name in ("uvicorn.error", "circus"):
        logging.getLogger(name).propagate = False


class RateLimit:
    """One log line per `interval_s` at most for one kind of event, reporting how many events it
    stands for: a flood of bad clients must not become a flood of log lines."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last = -interval_s
        self._events = 0

    def admit(self) -> int:
        """Count one event: the events since the last line if a line is due now, else 0."""
        self._events += 1
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return 0
        events, self._last, self._events = self._events, now, 0
        return events


class RateLimitedWarning:
    """A WARNING the project logs for each of many events, at most once per interval."""

    def __init__(self, logger: logging.Logger, message: str) -> None:
        self._logger = logger
        self._message = message
        self._limit = RateLimit()

    def warn(self, **fields: Any) -> None:
        if events := self._limit.admit():
            self._logger.warning(self._message, extra={**fields, "events": events})


class _RateLimitedMessage(logging.Filter):
    """The same bound for a message a library logs: uvicorn logs every unparsable request."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self._message = message
        self._limit = RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self._message:
            return True
        events = self._limit.admit()
        record.events = events
        return events > 0
