"""The Iris classifier as a BentoML service: /health, /predict and /batch_predict, the Open
Inference Protocol's routes under /v2 (`iris_bento.v2`), and the docs UI (`iris_bento.docs`).

Requests pass, outermost first: the request middleware (request id, limits, error contract,
access log), CORS when enabled, API-key auth (which names the client), per-client quotas when
enabled, then the fast path, which answers `POST /predict` and `/batch_predict`
(`iris_bento.fast_path`), and BentoML's routing for everything else. Both ways to the two routes
run the same code (`iris_bento.endpoints`).
Concurrent predictions of a worker, native and V2 alike, are coalesced into single model calls
by `MicroBatcher`.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
from pathlib import Path
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from iris_bento import endpoints
from iris_bento.auth import PUBLIC_PATHS, ApiKeyMiddleware
from iris_bento.batching import MicroBatcher
from iris_bento.bentoml_fixes import (
    fix_timeout_middleware,
    label_metrics_by_route,
    trace_only_when_exported,
)
from iris_bento.clients import load_clients
from iris_bento.connections import guard_connections, raise_open_file_limit
from iris_bento.docs import describe_api, docs_routes
from iris_bento.errors import renders_api_errors
from iris_bento.fast_path import FastPath
from iris_bento.features import (
    CLASS_NAMES,
    FEATURE_NAMES,
    MODEL_NAME,
    require_service_features,
)
from iris_bento.http import RequestMiddleware
from iris_bento.inference import load_predict_proba, require_model_files
from iris_bento.lifecycle import drain_on_sigterm, draining
from iris_bento.logs import configure_json_logging
from iris_bento.metrics import ModelMetrics, TrainingProfile
from iris_bento.quotas import with_quotas
from iris_bento.schemas import (
    BatchPrediction,
    BatchPredictRequest,
    Health,
    NamedFeatures,
    Prediction,
    PredictRequest,
    feature_row,
)
from iris_bento.settings import (
    cors_options,
    model_tag,
    project_settings,
    worker_count,
)
from iris_bento.v2 import v2_routes

log = logging.getLogger("iris_bento.service")


async def health(_: Request) -> Response:
    """GET /health: public, answers once the model is loaded (a worker only serves after that)."""
    service: IrisClassifier = bentoml.get_current_service()
    return Response(service.health_body, media_type="application/json")


@functools.cache
def openapi_document() -> bytes:
    """The docs UI's OpenAPI document, made once per worker."""
    service: IrisClassifier = bentoml.get_current_service()
    spec = IrisClassifier.openapi_spec.asdict()
    return json.dumps(describe_api(spec, str(service.model_ref.tag), PUBLIC_PATHS)).encode()


# Mounted ahead of BentoML's own routes: this `/` and `/docs.json` take the place of BentoML's.
project_routes = Starlette(
    routes=[
        Route("/health", health, methods=["GET"]),
        *docs_routes(openapi_document),
        *v2_routes(bentoml.get_current_service, is_ready=lambda: not draining()),
    ]
)


@bentoml.asgi_app(project_routes, path="/")
@bentoml.service
class IrisClassifier:
    """Serves the registered `iris_clf` pipeline: one model load per worker."""

    model_ref = bentoml.models.BentoModel(model_tag())

    @bentoml.on_deployment
    def refuse_to_start_without_keys() -> None:  # type: ignore[misc]
        """Runs once in `bentoml serve` before any worker: a one-line refusal, no restarts (no
        keys, or a keys file that cannot be read or parsed)."""
        load_clients()

    @bentoml.on_deployment
    def refuse_a_model_it_cannot_serve() -> None:  # type: ignore[misc]
        """Runs once in `bentoml serve` before any worker: one line rather than workers that
        fail to start until the crash-loop bound stops the server."""
        model = IrisClassifier.inner.model_ref.resolve()
        require_service_features(str(model.tag), model.info.metadata)
        require_model_files(str(model.tag), Path(model.path))

    @bentoml.on_deployment
    def set_up_supervisor() -> None:  # type: ignore[misc]
        """Runs once in `bentoml serve` before its supervisor starts: its log lines in JSON, dead
        workers replaced at once, and on SIGTERM the listening socket closed after the drain."""
        # Imported here: circus belongs to the supervisor, and workers never load it.
        from iris_bento.supervisor import supervise_workers

        configure_json_logging()
        settings = project_settings()
        supervise_workers(settings.supervisor, settings.shutdown.drain_s)

    def __init__(self) -> None:
        configure_json_logging()
        fix_timeout_middleware()
        label_metrics_by_route()
        trace_only_when_exported()
        settings = project_settings()
        guard_connections(settings.connections)
        open_files = raise_open_file_limit()
        drain_on_sigterm(settings.shutdown.drain_s)
        metadata = self.model_ref.info.metadata
        require_service_features(str(self.model_ref.tag), metadata)
        predict_proba, inference = load_predict_proba(Path(self.model_ref.path))
        self.model_version = self.model_ref.tag.version or ""
        self.classes = tuple(metadata.get("class_names", CLASS_NAMES))
        self.metrics = ModelMetrics(
            TrainingProfile.from_metadata(metadata), self.classes, self.model_version, inference
        )
        self.batcher = MicroBatcher(predict_proba, settings.batching, self.metrics)
        self.health_body = (
            Health(
                status="ok",
                model=MODEL_NAME,
                model_version=self.model_version,
                classes=list(self.classes),
                features=list(FEATURE_NAMES),
            )
            .model_dump_json()
            .encode()
        )
        # Everything loaded so far lives as long as the worker: keep it out of the collector's
        # full passes, which otherwise show up as 100 ms pauses in tail latency.
        gc.collect()
        gc.freeze()
        log.info(
            "service ready",
            extra={
                "model_tag": str(self.model_ref.tag),
                "inference": inference,
                "workers": worker_count(),
                "batching": settings.batching.model_dump(),
                "limits": settings.limits.model_dump(),
                "open_files": open_files,
                "config_file": os.environ.get("BENTOML_CONFIG"),
            },
        )

    async def __is_ready__(self) -> bool:
        """BentoML's /readyz: not ready while draining, so that traffic moves elsewhere."""
        return not draining()

    @bentoml.on_shutdown
    def stop_batcher(self) -> None:
        self.batcher.close()
        self.metrics.close()

    @bentoml.api(input_spec=PredictRequest, output_spec=Prediction)
    @renders_api_errors
    async def predict(self, id: str | None, features: list[float] | NamedFeatures) -> Response:
        """Classify one flower."""
        return json_response(await endpoints.predict(self, id, feature_row(features)))

    @bentoml.api(input_spec=BatchPredictRequest, output_spec=BatchPrediction)
    @renders_api_errors
    async def batch_predict(self, items: list[PredictRequest]) -> Response:
        """Classify several flowers; results come back in request order."""
        request_ids, rows = endpoints.batch_rows(items)
        return json_response(
            await endpoints.batch_predict(self, IrisClassifier.context.request, request_ids, rows)
        )


def json_response(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def cors_outside_auth(app: Any) -> Any:
    """BentoML's CORS settings, applied outside auth so that 401s carry CORS headers too."""
    options = cors_options()
    return CORSMiddleware(app, **options) if options else app


IrisClassifier.add_asgi_middleware(RequestMiddleware)
IrisClassifier.add_asgi_middleware(cors_outside_auth)  # type: ignore[arg-type]
IrisClassifier.add_asgi_middleware(ApiKeyMiddleware)
# Per-client quotas, right inside auth (which names the client); absent when quotas are off.
IrisClassifier.add_asgi_middleware(with_quotas)  # type: ignore[arg-type]
IrisClassifier.add_asgi_middleware(FastPath)
