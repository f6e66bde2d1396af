"""Configuration mistakes stop the start with one line, before any worker: on `bentoml serve`,
in `make check-config`, which checks a file without serving, and in `make serve`, which runs
that check first."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, ROOT, free_port, refused_start

pytestmark = pytest.mark.server


def serve_script_env() -> dict[str, str]:
    """`make serve`'s environment for scripts/serve.sh, on a free port."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PORT": str(free_port()),
    }


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


@contextmanager
def stand_in_model(name: str) -> Iterator[Any]:
    """A store entry of its own name holding no model files (the suite's iris_clf:latest stays
    the real model); removed afterwards."""
    import bentoml

    with bentoml.models.create(name) as created:
        pass
    model = bentoml.models.get(created.tag)  # the entry in the store, not the one being made
    try:
        yield model
    finally:
        bentoml.models.delete(model.tag)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [("not json", "BENTOML_CONFIG_OVERRIDES is not JSON"), ("[1]", "is not a JSON object")],
)
def test_make_serve_refuses_bad_overrides_in_one_line(
    model_tag: str, overrides: str, expected: str
) -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "serve.sh")],
        env={**serve_script_env(), "BENTOML_CONFIG_OVERRIDES": overrides},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr


def test_a_store_entry_without_its_model_file_stops_the_start_in_one_line(
    model_tag: str,
) -> None:
    with stand_in_model("iris_clf_empty") as model:
        error = refused_start({**os.environ, "IRIS_MODEL_TAG": str(model.tag)})
    assert f"{model.tag}: pipeline.joblib in the model store cannot be read" in error
    assert "make train" in error


def test_make_serve_says_an_unreadable_store_entry_in_one_line(model_tag: str) -> None:
    with stand_in_model("iris_clf_broken") as model:
        with (Path(model.path) / "model.yaml").open("a") as info:
            info.write("labels: [\n")
        result = subprocess.run(
            [str(ROOT / "scripts" / "serve.sh")],
            env={**serve_script_env(), "IRIS_MODEL_TAG": str(model.tag)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stdout == "", "nothing started"
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{model.tag} in the model store: not YAML at line")


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


# Mistakes in a configuration file, and the one line that names each.
BAD_FILES = pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "services:\n  IrisClassifier:\n    workers: -1\n",
            "invalid configuration: services.IrisClassifier.workers: -1 is not allowed",
        ),
        (
            "api_server:\n  http:\n    port: x\n",
            "invalid configuration: api_server.http.port: 'x' should be instance of 'int'",
        ),
        ("services: [1\n", "not YAML at line 2, column 1: expected ',' or ']'"),
        ("", "holds no mapping of settings"),
        ("- workers\n", "holds no mapping of settings"),
        ("workers: \x00\n", "not YAML: unacceptable character #x0000"),
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
    ids=[
        "bentoml-setting",
        "bentoml-type",
        "not-yaml",
        "empty",
        "a-list",
        "not-text",
        "unknown-project-setting",
        "inconsistent-project-settings",
    ],
)


@BAD_FILES
def test_check_config_refuses_a_bad_file_in_one_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "configuration.yaml"
    path.write_text(text)
    result = check_config(path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr


@BAD_FILES
def test_make_serve_refuses_a_bad_file_in_one_line(
    model_tag: str, tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "configuration.yaml"
    path.write_text(text)
    result = subprocess.run(
        [str(ROOT / "scripts" / "serve.sh")],
        env={**serve_script_env(), "BENTOML_CONFIG": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == "", "nothing started"
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr


def test_check_config_refuses_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    result = check_config(path)
    assert result.returncode == 1
    assert result.stderr == f"invalid configuration: {path}: No such file or directory\n"
