"""The API contract the Python peers share: schemas, key check, model and answers.

One copy, so the peers differ only in their web stack, not in what they validate or compute.
"""

import hashlib
import os
import secrets
from pathlib import Path
from typing import Annotated

import joblib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bench.payloads import CLASSES

Feature = Annotated[float, Field(strict=True, ge=0, le=100, allow_inf_nan=False)]


class Record(BaseModel):
    """One flower: exactly four finite measurements in 0..100 and an optional id."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(max_length=128)] | None = None
    features: Annotated[list[Feature], Field(min_length=4, max_length=4)]


class Batch(BaseModel):
    """1 to 1000 records, answered in order."""

    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[Record], Field(min_length=1, max_length=1000)]


def key_ok(given: str | None) -> bool:
    """Constant-time check of a presented key against BENCH_API_KEYS (comma-separated)."""
    keys = os.environ["BENCH_API_KEYS"].split(",")
    return given is not None and any(secrets.compare_digest(given, k) for k in keys)


def error(message: str, detail: object = None) -> dict[str, object]:
    """The JSON body of a 400 or 401."""
    return {"error": message, "detail": detail}


class Model:
    """The fitted pipeline from BENCH_MODEL_PATH and the version its file hash names."""

    def __init__(self) -> None:
        path = Path(os.environ["BENCH_MODEL_PATH"])
        self.pipeline = joblib.load(path)
        self.version = hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    def predict(self, records: list[Record]) -> list[dict[str, object]]:
        """Label, its probability and all three probabilities for each record."""
        proba = self.pipeline.predict_proba(np.array([r.features for r in records]))
        return [
            {
                "id": r.id,
                "label": CLASSES[int(p.argmax())],
                "probability": float(p.max()),
                "probabilities": dict(zip(CLASSES, p.tolist(), strict=True)),
                "model_version": self.version,
            }
            for r, p in zip(records, proba, strict=True)
        ]
