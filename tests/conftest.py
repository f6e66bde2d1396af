"""Fixtures: a temporary BentoML home holding a really trained model, the service in process, and
the real `bentoml serve` as a subprocess."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import API_KEYS, ROOT, RunningServer, bentoml_serve, start_server

# Everything BentoML does in this test process uses a throw-away home and the project's runtime
# configuration; set before anything imports bentoml.
_SCRATCH = Path(tempfile.mkdtemp(prefix="iris-bento-tests-"))
os.environ.update(
    BENTOML_HOME=str(_SCRATCH / "bentoml"),
    BENTOML_DO_NOT_TRACK="true",
    BENTOML_CONFIG=str(ROOT / "configuration.yaml"),
    IRIS_API_KEYS=",".join(API_KEYS),
    PROMETHEUS_MULTIPROC_DIR=str(_SCRATCH / "prometheus"),
)
os.environ.pop("IRIS_MODEL_TAG", None)
(_SCRATCH / "prometheus").mkdir()


def pytest_sessionfinish() -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def model_tag() -> str:
    """Train and register a model into the temporary store, exactly as `make serve` would."""
    import bentoml

    import train

    assert train.main([]) == 0
    return str(bentoml.models.get("iris_clf:latest").tag)


@pytest.fixture(scope="session")
def pipeline(model_tag: str) -> Any:
    """The registered pipeline, loaded from the store: the reference every answer must match."""
    import bentoml
    import joblib

    from iris_bento.features import PIPELINE_FILE

    return joblib.load(bentoml.models.get(model_tag).path_of(PIPELINE_FILE))


@pytest.fixture(scope="session")
def service_client(model_tag: str) -> Iterator[Any]:
    """The whole service in process (middlewares, validation, batching), over ASGI. One app per
    test process: a second would register BentoML's metrics twice."""
    from starlette.testclient import TestClient

    from service import IrisClassifier

    with TestClient(IrisClassifier.to_asgi()) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def client(service_client: Any) -> Any:
    return service_client


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"x-api-key": API_KEYS[0]}


@pytest.fixture(scope="module")
def server(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`bentoml serve service:IrisClassifier` on a free port, stopped with SIGTERM afterwards."""
    with start_server(
        bentoml_serve("service:IrisClassifier"), cwd=ROOT, log_dir=tmp_path_factory.mktemp("server")
    ) as running:
        yield running
