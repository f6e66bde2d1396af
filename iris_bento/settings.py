"""Runtime settings: the project's section of `configuration.yaml`; secrets from the environment.

The project's own settings live under `services.IrisClassifier.iris` in the same file as BentoML's
runtime settings, so `BENTOML_CONFIG` and `BENTOML_CONFIG_OVERRIDES` apply to both alike. This is
the only module that reads BentoML's configuration container.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any, Final

from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml.exceptions import BentoMLConfigException
from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

SERVICE_NAME: Final = "IrisClassifier"
SETTINGS_KEY: Final = "iris"
API_KEYS_ENV: Final = "IRIS_API_KEYS"
MODEL_TAG_ENV: Final = "IRIS_MODEL_TAG"
DEFAULT_MODEL_TAG: Final = "iris_clf:latest"
# Longer keys are refused without a comparison (comparing costs time in the key's length), so
# none can be configured either.
MAX_KEY_BYTES: Final = 256


class _Section(BaseModel):
    """A settings block: immutable, and a typo in the file is an error, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class BatchingSettings(_Section):
    """How concurrent requests are coalesced into one model call (see `iris_bento.batching`)."""

    enabled: bool = True
    run_in_thread: bool = False
    max_batch_rows: PositiveInt = 256
    max_wait_ms: NonNegativeFloat = 0.0
    max_queue_rows: PositiveInt = 16384
    timeout_s: PositiveFloat = 10.0

    @model_validator(mode="after")
    def _wait_within_deadline(self) -> BatchingSettings:
        """A wait for fuller batches as long as the deadline would time out every request."""
        if self.max_wait_ms >= self.timeout_s * 1000:
            raise ValueError("batching.max_wait_ms must be below batching.timeout_s")
        return self


class LimitSettings(_Section):
    """Bounds that protect a worker from one client: 400, 413 and 429 come from these."""

    max_batch_items: PositiveInt = 1000
    max_body_bytes: PositiveInt = 1024 * 1024
    max_in_flight: PositiveInt = 512
    request_timeout_s: PositiveFloat = 20.0


class ConnectionSettings(_Section):
    """What one connection may cost a worker (see `iris_bento.connections`), and how long a
    keep-alive connection lives (see `iris_bento.http.RequestMiddleware`)."""

    # Requests per connection on average; 0 keeps connections open for as long as clients do.
    mean_requests: NonNegativeInt = 100
    # The request line and headers together, in bytes, and the number of headers.
    max_head_bytes: PositiveInt = 32 * 1024
    max_headers: PositiveInt = 100
    # Time to send a whole request head, from the connection's opening or a request's first byte.
    head_timeout_s: PositiveFloat = 10.0


class ShutdownSettings(_Section):
    """What a worker does on SIGTERM (see `iris_bento.lifecycle`)."""

    # Seconds of serving on after SIGTERM, not ready and closing connections, before the
    # listening socket closes.
    drain_s: NonNegativeFloat = 5.0


class SupervisorSettings(_Section):
    """When the supervisor stops replacing workers that die (see `iris_bento.supervisor`)."""

    # Deaths replaced within `window_s`; one more stops the server with a non-zero exit.
    max_worker_deaths: PositiveInt = 5
    window_s: PositiveFloat = 60.0


class DocsSettings(_Section):
    """Whether the docs UI (`/`, `/docs.json`, `/static_content/`) answers without a key."""

    public: bool = False


class QuotaLimits(_Section):
    """One client's quota (see `iris_bento.quotas`, which maps it onto the `limits` library)."""

    requests_per_second: PositiveFloat = 50.0
    # Requests a client may send at once, after a quiet spell; at least one second's worth.
    burst: PositiveInt = 100
    # /batch_predict charges its item count and V2 /infer its rows; /predict charges none.
    rows_per_second: PositiveInt = 5000

    @model_validator(mode="after")
    def _burst_covers_a_second(self) -> QuotaLimits:
        if self.burst < self.requests_per_second:
            raise ValueError("quotas: burst must be at least requests_per_second")
        return self


class QuotaSettings(_Section):
    """Per-client quotas, shared by every worker and pod through `storage_url`."""

    enabled: bool = False
    # memory:// (each worker on its own) or redis://host:port/db (shared).
    storage_url: str = "memory://"
    # When the storage cannot be reached: serve anyway (true) or answer 503 (false).
    fail_open: bool = True
    default: QuotaLimits = QuotaLimits()
    # Overrides by client name: a client's settings replace the default's as a whole.
    clients: dict[str, QuotaLimits] = {}

    @model_validator(mode="after")
    def _known_storage(self) -> QuotaSettings:
        if not self.storage_url.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError(
                f"quotas.storage_url = {self.storage_url!r}: use memory:// or redis://host:port/db"
            )
        return self

    def for_client(self, name: str) -> QuotaLimits:
        return self.clients.get(name, self.default)


class ProjectSettings(_Section):
    batching: BatchingSettings = BatchingSettings()
    limits: LimitSettings = LimitSettings()
    connections: ConnectionSettings = ConnectionSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    docs: DocsSettings = DocsSettings()
    quotas: QuotaSettings = QuotaSettings()

    @model_validator(mode="after")
    def _consistent(self) -> ProjectSettings:
        """Settings that would make every large request fail, or a deadline never fire."""
        if self.limits.max_batch_items > self.batching.max_queue_rows:
            raise ValueError("limits.max_batch_items must not exceed batching.max_queue_rows")
        if self.batching.timeout_s >= self.limits.request_timeout_s:
            raise ValueError("batching.timeout_s must be below limits.request_timeout_s")
        quotas = [self.quotas.default, *self.quotas.clients.values()]
        if any(quota.rows_per_second < self.limits.max_batch_items for quota in quotas):
            # A largest /batch_predict would be refused forever.
            raise ValueError("quotas: rows_per_second must be at least limits.max_batch_items")
        return self


class ApiKeysError(BentoMLConfigException):
    """Raised at start-up so the service refuses to run unauthenticated, or with a key no client
    could present; BentoML's CLI prints a configuration exception as its message alone."""


class SettingsError(BentoMLConfigException):
    """A project setting that is not valid, said in one line: the setting, its value, what is
    allowed. `bentoml serve` stops with it before any worker starts."""


def describe(error: ValidationError) -> str:
    """pydantic's errors as one line of settings, named as they are written in the file."""
    problems = []
    for problem in error.errors():
        name = ".".join(["services", SERVICE_NAME, SETTINGS_KEY, *map(str, problem["loc"])])
        if problem["type"] == "extra_forbidden":
            problems.append(f"{name} is not a setting")
        elif problem["type"] == "value_error":
            problems.append(problem["msg"].removeprefix("Value error, "))
        else:
            problems.append(f"{name} = {problem['input']!r}: {problem['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def _service_config() -> dict[str, Any]:
    return BentoMLContainer.config.services[SERVICE_NAME].get() or {}


@cache
def project_settings() -> ProjectSettings:
    """The project's section of the loaded BentoML configuration, validated once: the
    configuration is fixed for the life of a process, and `/batch_predict` reads its limit
    on every request."""
    try:
        return ProjectSettings.model_validate(_service_config().get(SETTINGS_KEY, {}))
    except ValidationError as error:
        raise SettingsError(describe(error)) from None


def worker_count() -> int | str:
    """BentoML's `workers` setting for this service: a number, or `cpu_count`."""
    return _service_config().get("workers", 1)


def cors_options() -> dict[str, Any] | None:
    """BentoML's own `http.cors` options, or None when CORS is off."""
    if not BentoMLContainer.http.cors.enabled.get():
        return None
    return dict(BentoMLContainer.access_control_options.get())


def tracing_exporter() -> str | None:
    """BentoML's `tracing.exporter_type` as the worker sees it (the service's own section wins
    over the top-level one): None when nothing exports spans."""
    return BentoMLContainer.tracing.exporter_type.get()


def model_tag() -> str:
    """The model version to serve; `latest` unless pinned."""
    return os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG)
