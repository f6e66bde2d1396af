"""The Bento: `bentoml build`, then serve the built Bento (what the container's entrypoint runs)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import bentoml
import pytest
import requests
from helpers import API_KEYS, BIN, ROOT, bentoml_serve, example, start_server

pytestmark = pytest.mark.bento


@pytest.fixture(scope="module")
def bento_tag(model_tag: str) -> str:
    subprocess.run([str(BIN / "bentoml"), "build"], cwd=ROOT, check=True, capture_output=True)
    return str(bentoml.get("iris_classifier:latest").tag)


def test_the_bento_packs_the_model_and_only_the_serving_code(
    bento_tag: str, model_tag: str
) -> None:
    bento = bentoml.get(bento_tag)
    assert [str(model.tag) for model in bento.info.models] == [model_tag]
    source = Path(bento.path) / "src"
    files = {str(path.relative_to(source)) for path in source.rglob("*") if path.is_file()}
    assert "service.py" in files and "configuration.yaml" in files
    assert not any(name.startswith(("tests", ".venv", "bench")) for name in files)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in files)


def test_the_built_bento_serves_the_contract(bento_tag: str, tmp_path: Any) -> None:
    config = Path(bentoml.get(bento_tag).path) / "src" / "configuration.yaml"
    with start_server(
        bentoml_serve(bento_tag),
        cwd=tmp_path,
        log_dir=tmp_path,
        env={"BENTOML_CONFIG": str(config)},
    ) as running:
        headers = {"x-api-key": API_KEYS[0]}
        answer = requests.post(f"{running.url}/predict", json=example("predict"), headers=headers)
        assert (answer.status_code, answer.json()["label"]) == (200, "setosa")
        assert requests.get(f"{running.url}/health", timeout=5).json()["status"] == "ok"
        assert requests.post(f"{running.url}/predict", json=example("predict")).status_code == 401
