"""Serving code for the Iris classifier: schemas, auth, errors, batching, settings and logging."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Final

# The project's folder, or the Bento's copy of it: pyproject.toml and examples/ come along.
PROJECT_DIR: Final = Path(__file__).resolve().parents[1]


@cache
def project_version() -> str:
    """The project's version, from pyproject.toml: the API documents and the V2 server metadata
    name it."""
    return tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["version"]
