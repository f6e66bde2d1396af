"""`make serve`'s launcher, `scripts/serve.sh`: train only when the store has no model, make a
development key when none is set, refuse a pinned version the store lacks."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import requests
from helpers import BIN, ROOT, start_server

pytestmark = pytest.mark.server

SCRIPT = [str(ROOT / "scripts" / "serve.sh")]
TRAINING = "in the model store: training one"


def script_env(**overrides: str) -> dict[str, str]:
    """The environment `make serve` gives the script: the venv first on PATH."""
    return {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **overrides}


def test_the_stored_model_is_served_without_training(model_tag: str, tmp_path: Path) -> None:
    with start_server(SCRIPT, ROOT, tmp_path, env=script_env()) as running:
        health = requests.get(f"{running.url}/health", timeout=5).json()
        output = "\n".join(running.log_lines())
    assert health["model_version"] == model_tag.split(":")[1]
    assert TRAINING not in output


def test_an_empty_store_is_trained_first(model_tag: str, tmp_path: Path) -> None:
    empty_home = tmp_path / "empty-home"
    env = script_env(BENTOML_HOME=str(empty_home))
    with start_server(SCRIPT, ROOT, tmp_path, env=env) as running:
        health = requests.get(f"{running.url}/health", timeout=5).json()
        output = "\n".join(running.log_lines())
    assert TRAINING in output
    assert (empty_home / "models" / "iris_clf" / health["model_version"] / "model.yaml").is_file()


def test_without_keys_a_development_key_is_printed_and_works(
    model_tag: str, tmp_path: Path
) -> None:
    env = script_env()
    with start_server(["env", "-u", "IRIS_API_KEYS", *SCRIPT], ROOT, tmp_path, env=env) as running:
        banner = "\n".join(running.log_lines())
        key = re.search(r"development key \(in \.dev-api-key\)\s+(\S+)", banner)
        assert key, banner
        answer = requests.post(
            f"{running.url}/predict",
            json={"features": [5.1, 3.5, 1.4, 0.2]},
            headers={"x-api-key": key.group(1)},
            timeout=5,
        )
    assert answer.status_code == 200
    assert (ROOT / ".dev-api-key").read_text().strip() == key.group(1)


def test_a_pinned_version_missing_from_the_store_is_refused(model_tag: str) -> None:
    done = subprocess.run(
        SCRIPT,
        env={**os.environ, **script_env(IRIS_MODEL_TAG="iris_clf:notinthestore")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "IRIS_MODEL_TAG=iris_clf:notinthestore is not in the model store" in done.stderr
