"""The container tier: the real image, built with `bentoml containerize --backend podman`, run and
checked over HTTP by scripts/container_smoke.sh; then the image itself is inspected.

Runs always in CI (CI=true; the script installs podman when missing) and wherever podman is
installed; skipped otherwise. A cold run (podman install, base image, venv layer) takes about two
minutes on two cores; a warm one about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import API_KEYS, free_port, predict_through_a_stop

# The script's podman storage and sandbox settings, shared with the drills (tests/test_rollout.py).
from rollout.instances import PODMAN_ROOT, podman_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "container_smoke.sh"
IMAGE = "iris_classifier:smoke"
# The goal; BentoML's default image of the same service measured 1073 MB here.
MAX_IMAGE_BYTES = 450_000_000

# An invalid project setting, as an operator might pass it to the container.
OVERRIDE_ROWS = json.dumps(
    {"services": {"IrisClassifier": {"iris": {"batching": {"max_batch_rows": -1}}}}}
)

# The Deployment's emptyDir on /tmp, inside the container.
POD_TMPFS = "/tmp:rw,size=64m"  # noqa: S108

IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = [
    pytest.mark.skipif(
        not IN_CI and shutil.which("podman") is None,
        reason="container tier: podman not installed (runs in CI, or install podman)",
    ),
    # Covers a cold first run: podman install, base image and image build.
    pytest.mark.timeout(1200),
]


def podman(*args: str) -> str:
    """Run one podman command against the script's storage; return its stdout."""
    result = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build, run and check the image once for the module; the figures it measured."""
    work = tmp_path_factory.mktemp("container")
    report = work / "report.json"
    env = {
        **os.environ,
        "IRIS_PODMAN_ROOT": str(PODMAN_ROOT),
        "IRIS_SMOKE_REPORT": str(report),
        "IRIS_IMAGE_TAG": IMAGE,
        # A store of its own: the script trains and registers the model there.
        "BENTOML_HOME": str(work / "bentoml"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1100
    )
    output = result.stdout + result.stderr
    print(output)  # the measured figures, in pytest's captured output
    assert result.returncode == 0, output[-4000:]
    return {
        **json.loads(report.read_text()),
        "output": result.stdout,
        "bentoml_home": env["BENTOML_HOME"],
    }


def test_contract_checks_pass_against_the_container(smoke: dict[str, Any]) -> None:
    lines = [line for line in smoke["output"].splitlines() if line.startswith("ok  ")]
    checked = " ".join(lines)
    for route in ("GET /health", "GET /readyz", "/predict with x-api-key", "no key 401"):
        assert route in checked
    for route in ("/batch_predict 200", "/batch_predict without key 401", "GET /metrics"):
        assert route in checked


def test_image_size_meets_the_goal(smoke: dict[str, Any]) -> None:
    assert smoke["image_size_bytes"] <= MAX_IMAGE_BYTES, smoke


def test_container_is_ready_quickly(smoke: dict[str, Any]) -> None:
    assert smoke["ready_seconds"] < 30, smoke


def test_a_killed_worker_is_replaced_in_the_container(smoke: dict[str, Any]) -> None:
    """The image sets BENTOML_CONTAINERIZED, where BentoML alone never replaces a dead worker;
    the script SIGKILLed one inside the container and found the supervisor's two log lines."""
    assert smoke["worker_replaced_seconds"] < 2, smoke
    assert smoke["worker_ready_seconds"] < 30, smoke


@pytest.fixture(scope="module")
def image_config(smoke: dict[str, Any]) -> dict[str, Any]:
    """The built image's inspection (user, env, health check, entrypoint)."""
    return json.loads(podman("image", "inspect", IMAGE))[0]


def test_image_runs_as_a_numeric_non_root_user(image_config: dict[str, Any]) -> None:
    assert image_config["Config"]["User"] == "1034:1034"


def test_image_holds_no_api_key(image_config: dict[str, Any]) -> None:
    names = {entry.split("=", 1)[0] for entry in image_config["Config"].get("Env", [])}
    assert "IRIS_API_KEYS" not in names
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", IMAGE)
    assert "IRIS_API_KEYS" not in history


def test_image_has_a_readiness_healthcheck(image_config: dict[str, Any]) -> None:
    check = image_config["Healthcheck"]["Test"]
    assert check[0] == "CMD"
    assert "/readyz" in " ".join(check)


def test_image_holds_the_model_and_no_compiler(smoke: dict[str, Any]) -> None:
    listing = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "ls /home/bentoml/bento/models/iris_clf; command -v gcc cc git || echo no-toolchain",
    )
    assert listing.split()[-1] == "no-toolchain"
    assert len(listing.split()) >= 2, "a model version directory expected"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, "IRIS_API_KEYS is not set"),
        ({"IRIS_API_KEYS": " , "}, "IRIS_API_KEYS is not set"),
        (
            {"IRIS_API_KEYS": "k", "BENTOML_CONFIG_OVERRIDES": OVERRIDE_ROWS},
            "services.IrisClassifier.iris.batching.max_batch_rows = -1",
        ),
        (
            {"IRIS_API_KEYS": "k", "IRIS_MODEL_TAG": "iris_clf:nosuchversion"},
            "iris_clf:nosuchversion could not be found",
        ),
    ],
    ids=["no-keys", "blank-keys", "bad-setting", "unknown-model"],
)
def test_a_start_up_mistake_stops_the_container_in_one_line(
    smoke: dict[str, Any], env: dict[str, str], line: str
) -> None:
    """Exit 1 and one error line, before any worker; no traceback."""
    env_args = [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]
    result = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", *env_args, IMAGE],
        env={k: v for k, v in podman_env().items() if k != "IRIS_API_KEYS"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [text for text in output.splitlines() if text.startswith("Error:")]
    assert len(errors) == 1 and line in errors[0], output
    assert "Traceback" not in output and "service ready" not in output, output


def test_generated_dockerfile_passes_hadolint(smoke: dict[str, Any]) -> None:
    # The Bento the script built, in the store it used (`latest` names its version).
    bentos = Path(smoke["bentoml_home"]) / "bentos" / "iris_classifier"
    bento = bentos / (bentos / "latest").read_text().strip()
    dockerfile = bento / "env" / "docker" / "Dockerfile"
    assert "FROM python:3.11-slim AS base-container" in dockerfile.read_text()
    lint = subprocess.run(
        [
            str(Path(sys.executable).with_name("hadolint")),
            "--config",
            str(ROOT / "deploy" / "docker" / "hadolint.yaml"),
            "--no-color",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


SMOKE_HTTP = [sys.executable, str(ROOT / "scripts" / "smoke_http.py")]


def start_container(name: str, key: str, *options: str) -> str:
    """The image, detached on the host network with `options`, serving `key` on a free
    loopback port; its URL once ready."""
    port = free_port()
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        *options,
        "--env",
        f"IRIS_API_KEYS={key}",
        "--env",
        f"PORT={port}",
        "--env",
        "BENTOML_HOST=127.0.0.1",
        IMAGE,
    )
    url = f"http://127.0.0.1:{port}"
    subprocess.run([*SMOKE_HTTP, "wait", url, "--timeout", "90"], check=True, timeout=120)
    return url


def test_image_serves_as_the_kubernetes_pod_runs_it(smoke: dict[str, Any]) -> None:
    """The Deployment's settings: the ConfigMap's configuration.yaml mounted read-only at
    /etc/iris with BENTOML_CONFIG pointing at it, the image's numeric user, a read-only root
    filesystem with only /tmp writable, no capabilities, no privilege escalation."""
    name = f"iris-pod-{os.getpid()}"
    key = "pod-check-key"
    config = ROOT / "deploy" / "k8s" / "configuration.yaml"
    try:
        url = start_container(
            name,
            key,
            "--read-only",
            "--read-only-tmpfs=false",
            "--tmpfs",
            POD_TMPFS,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            "1034:1034",
            "--volume",
            f"{config}:/etc/iris/configuration.yaml:ro",
            "--env",
            "BENTOML_CONFIG=/etc/iris/configuration.yaml",
        )
        checks = subprocess.run(
            [*SMOKE_HTTP, "check", url, "--key", key], capture_output=True, text=True, timeout=60
        )
        assert checks.returncode == 0, checks.stdout + checks.stderr
        logs = podman("logs", name)
        assert "/etc/iris/configuration.yaml" in logs, "the mounted configuration is the one used"
    finally:
        podman("rm", "--force", "--ignore", "--time", "10", name)


def test_sigterm_to_the_container_loses_no_request(smoke: dict[str, Any]) -> None:
    """SIGTERM to the container's PID 1 (`bentoml serve`, as Kubernetes sends it after the
    preStop pause), with the default drain, under load from 32 keep-alive clients."""
    name = f"iris-stop-{os.getpid()}"
    try:
        url = start_container(name, API_KEYS[0])
        outcomes, stopped_after = predict_through_a_stop(
            url,
            stop=lambda: podman("kill", "--signal", "TERM", name),
            wait_stopped=lambda: podman("wait", name),
        )
        print(f"container stop under load: {dict(outcomes)}, exit after {stopped_after:.2f} s")
        assert outcomes["lost"] == 0, outcomes
        assert set(outcomes) <= {"ok", "refused"}, outcomes
        assert outcomes["ok"] > 100
        drain_s = 5  # configuration.yaml's shutdown.drain_s, inside the image
        assert drain_s < stopped_after < drain_s + 5
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).strip() == "0"
        assert "new connections are refused" in podman("logs", name)
    finally:
        podman("rm", "--force", "--ignore", "--time", "10", name)


def test_compose_file_resolves(smoke: dict[str, Any]) -> None:
    compose = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    assert compose, "podman-compose is pinned in requirements-dev.txt"

    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [compose, "-f", str(ROOT / "compose.yaml"), "config"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    env = {**podman_env(), "IRIS_API_KEYS": "compose-check-key"}
    result = config(env)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    for replica in ("iris-1", "iris-2"):
        service = resolved["services"][replica]
        assert service["environment"]["IRIS_API_KEYS"] == "compose-check-key"
        assert service["ulimits"]["nofile"] == {"soft": 65536, "hard": 65536}
    env.pop("IRIS_API_KEYS")
    missing = config(env)
    assert missing.returncode != 0, "compose must refuse to start without IRIS_API_KEYS"
