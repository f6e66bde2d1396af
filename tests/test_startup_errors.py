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
from helpers import BIN, ROOT, free_port

pytestmark = pytest.mark.server


def project_override(section: dict[str, object]) -> str:
    return json.dumps({"services": {"IrisClassifier": {"iris": section}}})


def test_an_invalid_project_setting_stops_the_start_in_one_line(model_tag: str) -> None:
    env = {
        **os.environ,
        "BENTOML_CONFIG_OVERRIDES": project_override({"batching": {"max_batch_rows": -1}}),
    }
    result = subprocess.run(
        [str(BIN / "bentoml"), "serve", "service:IrisClassifier", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "services.IrisClassifier.iris.batching.max_batch_rows = -1" in errors[0]
    assert "greater than 0" in errors[0]
    assert "Traceback" not in output
    assert "service ready" not in output, "no worker started"


def test_a_busy_port_stops_the_start_in_one_line(model_tag: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [str(BIN / "bentoml"), "serve", "service:IrisClassifier", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert f":{port} is already in use" in errors[0]
    assert "Traceback" not in output


def test_a_model_trained_on_other_features_stops_the_start_in_one_line(model_tag: str) -> None:
    import bentoml

    reordered = ["petal_length", "petal_width", "sepal_length", "sepal_width"]
    # Its own name: the suite's iris_clf:latest stays the real model.
    with bentoml.models.create(
        "iris_clf_reordered", metadata={"feature_names": reordered}
    ) as model:
        pass
    env = {**os.environ, "IRIS_MODEL_TAG": str(model.tag)}
    result = subprocess.run(
        [str(BIN / "bentoml"), "serve", "service:IrisClassifier", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    bentoml.models.delete(model.tag)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert f"{model.tag} was trained on features {reordered}" in errors[0]
    assert "Traceback" not in output
    assert "service ready" not in output, "no worker started"


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
