"""Model versions for the drills: train one into the model store, pack it as a Bento, and build
its image (`make image`) when the instances are containers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from rollout.instances import ROOT, podman_env

VENV_BIN = Path(sys.executable).parent


def _run(argv: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def train(train_args: list[str]) -> str:
    """A new model version in the store (BENTOML_HOME): its version, as answers report it."""
    out = _run([sys.executable, "train.py", *train_args], dict(os.environ), timeout=300)
    found = re.search(r"^registered iris_clf:(\S+)$", out, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"train.py registered nothing:\n{out[-2000:]}")
    return found.group(1)


def build_bento() -> str:
    """A Bento of the newest model: its tag, which `bentoml serve` takes."""
    out = _run([str(VENV_BIN / "bentoml"), "build", ".", "--output", "tag"], dict(os.environ), 300)
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


def build_image(tag: str) -> str:
    """The image of a new Bento of the newest model, tagged `tag`, with `make image` as the
    container tier builds it here (podman, host network, the venv's uv mounted in)."""
    uv = VENV_BIN / "uv"
    _run(
        [
            "make", "--no-print-directory", "image", f"IMAGE_TAG={tag}", "IMAGE_BACKEND=podman",
            f"CONTAINERIZE_ARGS=--opt network=host --opt volume={uv}:/usr/local/bin/uv:ro",
        ],
        {**podman_env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
        timeout=900,
    )  # fmt: skip
    return tag
