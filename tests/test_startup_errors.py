"""Configuration mistakes stop the start with one line, before any worker: on `bentoml serve`,
and in `make check-config`, which checks a file without serving."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, free_port, refused_start

pytestmark = pytest.mark.server


def project_override(section: dict[str, object]) -> str:
    return json.dumps({"services": {"IrisClassifier": {"iris": section}}})


def test_an_invalid_project_setting_stops_the_start_in_one_line(model_tag: str) -> None:
    overrides = project_override({"batching": {"max_batch_rows": -1}})
    error = refused_start({**os.environ, "BENTOML_CONFIG_OVERRIDES": overrides})
    assert "services.IrisClassifier.iris.batching.max_batch_rows = -1" in error
    assert "greater than 0" in error


def test_a_busy_port_stops_the_start_in_one_line(model_tag: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        error = refused_start(dict(os.environ), port)
    assert f":{port} is already in use" in error


def test_a_model_trained_on_other_features_stops_the_start_in_one_line(model_tag: str) -> None:
    import bentoml

    reordered = ["petal_length", "petal_width", "sepal_length", "sepal_width"]
    # Its own name: the suite's iris_clf:latest stays the real model.
    with bentoml.models.create(
        "iris_clf_reordered", metadata={"feature_names": reordered}
    ) as model:
        pass
    try:
        error = refused_start({**os.environ, "IRIS_MODEL_TAG": str(model.tag)})
    finally:
        bentoml.models.delete(model.tag)
    assert f"{model.tag} was trained on features {reordered}" in error


def check_config(path: Path, overrides: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_CONFIG": str(path)}
    env.pop("BENTOML_CONFIG_OVERRIDES", None)
    if overrides is not None:
        env["BENTOML_CONFIG_OVERRIDES"] = overrides
    return subprocess.run(
        [sys.executable, "-m", "iris_bento.config_check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "path", [ROOT / "configuration.yaml", ROOT / "deploy" / "k8s" / "configuration.yaml"]
)
def test_check_config_passes_the_shipped_files(path: Path) -> None:
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("valid (2 workers, drain 5 s)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services:\n  IrisClassifier:\n    workers: -1\n", "Key 'workers' error"),
        (
            "services:\n  IrisClassifier:\n    iris:\n      limits:\n        max_in_flite: 3\n",
            "services.IrisClassifier.iris.limits.max_in_flite is not a setting",
        ),
        (
            "services:\n  IrisClassifier:\n    iris:\n      batching:\n"
            "        max_wait_ms: 20000\n",
            "batching.max_wait_ms must be below batching.timeout_s",
        ),
    ],
    ids=["bentoml-setting", "unknown-project-setting", "inconsistent-project-settings"],
)
def test_check_config_refuses_a_bad_file_in_one_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "configuration.yaml"
    path.write_text(text)
    result = check_config(path)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "Applying" not in line]) == 1


def test_check_config_refuses_a_missing_file(tmp_path: Path) -> None:
    result = check_config(tmp_path / "nowhere.yaml")
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "Traceback" not in result.stderr
