"""Per-client quotas (`quotas` under `services.IrisClassifier.iris`), with the `limits` library.

`QuotaMiddleware` sits right inside `ApiKeyMiddleware`, so it knows the client
(`scope["state"]["client"]`) and has not read the body yet: a request over its client's
request quota gets a 429 before anything parses it. `/batch_predict` then charges its item count
against the client's rows quota with `charge_rows`, once the body is valid. With quotas off the
middleware is not in the chain at all (`with_quotas`).

How the settings map onto `limits` (which counts windows in whole seconds):

- requests: a moving window of `burst` requests over `round(burst / requests_per_second)`
  seconds (at least 1). A client may send its whole burst at once after a quiet spell, and never
  more than `burst` within any such window, so over time `burst / window` requests per second:
  `requests_per_second` exactly when `burst` is a multiple of it. Unlike a token bucket, which
  refills continuously, each request's slot comes back one window after it was taken.
- rows: a moving window of `rows_per_second` rows over 1 second; a request of N items takes N
  entries at once, or none.

The storage is `memory://` (each worker counts on its own: with W workers a client gets up to W
times its quota from one instance) or `redis://` (every worker of every instance shares the
counts). When Redis does not answer within `STORAGE_TIMEOUT_S`, the request is served
(`fail_open: true`) or refused with 503, counted in `iris_quota_storage_errors_total`, and
logged as a WARNING at most once per interval; for `STORAGE_RETRY_S` after a failure, requests
do not wait on Redis at all. Nothing Redis does becomes a 5xx of the service's own.

Answers to authenticated requests carry the IETF draft's fields
(draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy` (the client's quotas) and `RateLimit`
(what is left, and the seconds until the oldest request of the window is forgotten); 429s carry
`Retry-After` in whole seconds, after which a request fits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, RateLimitItemPerSecond
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iris_bento.client_metrics import quota_rejected, quota_storage_error
from iris_bento.clients import client_of
from iris_bento.errors import ApiError, error_body, error_headers
from iris_bento.logs import RateLimitedWarning
from iris_bento.settings import QuotaLimits, QuotaSettings, project_settings

log = logging.getLogger("iris_bento.quotas")

STATE_KEY: Final = "quota"
# Redis on the same network answers in about a millisecond; past this it counts as away.
STORAGE_TIMEOUT_S: Final = 0.25
# After a failure, requests do not try the storage for this long.
STORAGE_RETRY_S: Final = 1.0
ROWS_WINDOW_S: Final = 1


class OverQuota(ApiError):
    """The client's rows quota is used up (`/batch_predict`)."""

    status = 429


class QuotaUnavailable(ApiError):
    """The quota storage is away and `fail_open` is off."""

    status = 503


@dataclass(frozen=True)
class Policy:
    """One client's quotas as `limits` items, their storage keys and the policy header."""

    client: str
    requests: RateLimitItem
    rows: RateLimitItem
    requests_key: str
    rows_key: str
    policy_header: tuple[bytes, bytes]

    @classmethod
    def of(cls, client: str, quota: QuotaLimits) -> Policy:
        window = max(1, round(quota.burst / quota.requests_per_second))
        requests = RateLimitItemPerSecond(quota.burst, window)
        rows = RateLimitItemPerSecond(quota.rows_per_second, ROWS_WINDOW_S)
        header = (
            f'"requests";q={quota.burst};w={window}, '
            f'"rows";q={quota.rows_per_second};w={ROWS_WINDOW_S};qu="rows"'
        )
        return cls(
            client,
            requests,
            rows,
            requests.key_for("iris", "requests", client),
            rows.key_for("iris", "rows", client),
            (b"ratelimit-policy", header.encode()),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """One hit on a window: whether it fitted, what is left, and when a slot comes back."""

    allowed: bool
    remaining: int
    reset_s: int  # whole seconds until the oldest entry of the window expires

    def item(self, name: str) -> str:
        return f'"{name}";r={self.remaining};t={self.reset_s}'


def _whole_seconds(seconds: float) -> int:
    return max(0, math.ceil(seconds))


def redacted(url: str) -> str:
    """A storage URL without its password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit(parts._replace(netloc=netloc))


def _memory_storage() -> Any:
    """`limits`' memory storage, its expired entries dropped by one long-lived thread.

    As shipped (5.8.0), the storage starts a new `threading.Timer` 10 ms after each expiry pass,
    from the next hit: measured in process, waiting for those thread starts cost about 12 µs a
    request, a third of what quotas cost. The windows are the same; only expired entries go a
    little later (every 0.1 s). tests/test_quotas.py fails if the hook moves."""
    import threading

    from limits.storage import MemoryStorage

    class QuietMemoryStorage(MemoryStorage):
        def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 (the library's name)
            return None

    storage = QuietMemoryStorage()
    expire = storage._MemoryStorage__expire_events  # type: ignore[attr-defined]

    def expire_every() -> None:
        while True:
            time.sleep(0.1)
            expire()

    threading.Thread(target=expire_every, name="quota-expiry", daemon=True).start()
    return storage


class Limiter:
    """Moving windows in `limits`' storage: in process (`memory://`, called directly: no I/O)
    or Redis (`redis://`, through `limits.aio` and redis-py's asyncio client)."""

    def __init__(self, storage_url: str) -> None:
        self.storage_url = storage_url
        self._memory = storage_url.startswith("memory://")
        self._storage: Any = None
        self._down_until = 0.0
        self._was_down = False
        self._warning = RateLimitedWarning(
            log, "quota storage not answering: requests go unchecked meanwhile"
        )

    def _open(self) -> Any:
        if self._memory:
            return _memory_storage()
        from limits.aio.storage import RedisStorage
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return RedisStorage(
            "async+" + self.storage_url,
            implementation="redispy",
            key_prefix="iris-bento",
            socket_timeout=STORAGE_TIMEOUT_S,
            socket_connect_timeout=STORAGE_TIMEOUT_S,
            # One immediate retry: a pooled connection that a restarted Redis dropped is
            # replaced at once (redis-py's default backs off for up to seconds).
            retry=Retry(NoBackoff(), 1),
        )

    async def hit(self, item: RateLimitItem, key: str, cost: int = 1) -> Verdict | None:
        """Take `cost` entries of the window if they fit; None when the storage failed."""
        if self._storage is None:
            self._storage = self._open()
        limit, expiry = item.amount, item.get_expiry()
        if self._memory:
            allowed = self._storage.acquire_entry(key, limit, expiry, cost)
            start, count = self._storage.get_moving_window(key, limit, expiry)
        else:
            now = time.monotonic()
            if now < self._down_until:
                return None
            try:
                async with asyncio.timeout(STORAGE_TIMEOUT_S):
                    allowed = await self._storage.acquire_entry(key, limit, expiry, cost)
                    start, count = await self._storage.get_moving_window(key, limit, expiry)
            except Exception as error:  # whatever Redis raises: serve on
                self._down_until = now + STORAGE_RETRY_S
                self._was_down = True
                self._warning.warn(storage=redacted(self.storage_url), error=type(error).__name__)
                return None
            if self._was_down:
                self._was_down = False
                storage = redacted(self.storage_url)
                log.info("quota storage answering again", extra={"storage": storage})
        reset_s = _whole_seconds(start + expiry - time.time()) if count else expiry
        return Verdict(allowed, max(0, limit - count), reset_s)


@dataclass
class Charge:
    """A request's quota state, in `scope["state"]["quota"]`: its policy and verdicts."""

    limiter: Limiter
    policy: Policy
    fail_open: bool
    requests: Verdict | None
    rows: Verdict | None = field(default=None)

    def rate_limit_header(self) -> tuple[bytes, bytes] | None:
        items = []
        if self.requests is not None:
            items.append(self.requests.item("requests"))
        if self.rows is not None:
            items.append(self.rows.item("rows"))
        return (b"ratelimit", ", ".join(items).encode()) if items else None


async def charge_rows(request_or_scope: Any, rows: int) -> None:
    """Charge `rows` to the client's rows quota; raises `OverQuota` (429) when they do not fit,
    or `QuotaUnavailable` (503) when the storage is away and `fail_open` is off. Takes the
    Starlette request of an endpoint or an ASGI scope; a no-op when quotas are off."""
    scope = getattr(request_or_scope, "scope", request_or_scope)
    state = scope.get("state")
    charge: Charge | None = state.get(STATE_KEY) if state else None
    if charge is None:
        return
    policy = charge.policy
    verdict = await charge.limiter.hit(policy.rows, policy.rows_key, rows)
    if verdict is None:
        quota_storage_error()
        if not charge.fail_open:
            error = QuotaUnavailable("the quota service is unavailable; retry shortly")
            error.headers = {"retry-after": "1"}
            raise error
        return
    charge.rows = verdict
    if not verdict.allowed:
        quota_rejected(policy.client, "rows")
        error = OverQuota(
            f"client {policy.client} is over its quota of {policy.rows.amount} rows per "
            f"{ROWS_WINDOW_S} s ({rows} asked)"
        )
        # After one window every row taken now is forgotten.
        error.headers = {"retry-after": str(max(1, ROWS_WINDOW_S))}
        raise error


class QuotaMiddleware:
    """Counts every authenticated request against its client's request quota: 429 when over,
    the rate-limit fields on every answer."""

    def __init__(self, app: ASGIApp, settings: QuotaSettings | None = None) -> None:
        self.app = app
        self._settings = settings if settings is not None else project_settings().quotas
        self._limiter = Limiter(self._settings.storage_url)
        self._fail_open = self._settings.fail_open
        self._policies: dict[str, Policy] = {}

    def _policy(self, client: str) -> Policy:
        policy = self._policies.get(client)
        if policy is None:
            policy = Policy.of(client, self._settings.for_client(client))
            self._policies[client] = policy
        return policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = client_of(scope) if scope["type"] == "http" else None
        if client is None:  # public paths, CORS preflights, lifespan
            await self.app(scope, receive, send)
            return
        policy = self._policy(client.name)
        verdict = await self._limiter.hit(policy.requests, policy.requests_key)
        if verdict is None:
            quota_storage_error()
            if not self._fail_open:
                await _refuse(
                    send, 503, "the quota service is unavailable; retry shortly", 1, policy, None
                )
                return
        elif not verdict.allowed:
            quota_rejected(client.name, "requests")
            item = policy.requests
            details = (
                f"client {client.name} is over its quota of {item.amount} requests per "
                f"{item.get_expiry()} s"
            )
            await _refuse(send, 429, details, max(1, verdict.reset_s), policy, verdict)
            return
        charge = Charge(self._limiter, policy, self._fail_open, verdict)
        scope["state"][STATE_KEY] = charge

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append(policy.policy_header)
                if (rate_limit := charge.rate_limit_header()) is not None:
                    headers.append(rate_limit)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_fields)


async def _refuse(
    send: Send,
    status: int,
    details: str,
    retry_after_s: int,
    policy: Policy,
    verdict: Verdict | None,
) -> None:
    body = error_body(status, details)
    headers = [
        *error_headers(body),
        (b"retry-after", str(retry_after_s).encode()),
        policy.policy_header,
    ]
    if verdict is not None:
        headers.append((b"ratelimit", verdict.item("requests").encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def with_quotas(app: ASGIApp) -> ASGIApp:
    """The quota middleware around `app` when quotas are enabled; `app` itself otherwise."""
    settings = project_settings().quotas
    if not settings.enabled:
        return app
    log.info(
        "quotas on",
        extra={
            "storage": redacted(settings.storage_url),
            "fail_open": settings.fail_open,
            "default": settings.default.model_dump(),
            "clients": sorted(settings.clients),
        },
    )
    return QuotaMiddleware(app, settings)
