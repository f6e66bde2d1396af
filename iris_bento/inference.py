"""The model call: plain numpy for a scaled logistic regression, the pickled pipeline otherwise.

For one row, scikit-learn's `predict_proba` spends about 0.23 ms on input checks that the request
schemas have already made, and importing scikit-learn and unpickling the pipeline cost each worker
about a second at start. `train.py` therefore also stores the fitted arrays of a StandardScaler +
multinomial LogisticRegression, after checking that they give the pipeline's probabilities; the
service computes the same arithmetic in the same order and never imports scikit-learn for them.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from bentoml.exceptions import BentoMLException

from iris_bento.features import LINEAR_FILE, PIPELINE_FILE

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

PredictProba = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class SoftmaxLinearModel:
    """`softmax(((x - mean) / scale) @ coef.T + intercept)`, the pipeline's own arithmetic."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def __post_init__(self) -> None:
        """Arrays that disagree would broadcast into wrong answers instead of failing."""
        classes, features = self.coef.shape
        if not (
            self.mean.shape == self.scale.shape == (features,)
            and self.intercept.shape == (classes,)
            and classes > 2
        ):
            raise ValueError(
                f"inconsistent arrays: mean {self.mean.shape}, scale {self.scale.shape}, "
                f"coef {self.coef.shape}, intercept {self.intercept.shape}"
            )

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> SoftmaxLinearModel | None:
        """The fitted arrays of a StandardScaler + multinomial LogisticRegression, else None."""
        # Imported here: only training and the benchmark call this, never the service.
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        steps = [step for _, step in pipeline.steps]
        if not (
            len(steps) == 2
            and isinstance(steps[0], StandardScaler)
            and steps[0].with_mean  # otherwise `mean_` is fitted but never subtracted
            and steps[0].with_std
            and isinstance(steps[1], LogisticRegression)
            and len(steps[1].classes_) > 2  # two classes would use a sigmoid, not a softmax
        ):
            return None
        scaler, classifier = steps
        return cls(
            mean=scaler.mean_,
            scale=scaler.scale_,
            coef=classifier.coef_,
            intercept=classifier.intercept_,
        )

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per input row, columns in class order.

        Every value is a function of its own row alone, bit for bit, whatever the batch: a
        matrix product (`@`) and `sum(axis=1)` let BLAS and numpy choose their kernels and
        summation order by the batch's size and alignment, so a row computed alone and in a
        batch could differ in the last digit. Here each row's sums are elementwise operations
        in a fixed order, and `exp`, `max` and the division work element by element.
        """
        scaled = (rows - self.mean) / self.scale
        scores = scaled[:, :1] * self.coef[:, 0]
        for feature in range(1, self.coef.shape[1]):
            scores += scaled[:, feature : feature + 1] * self.coef[:, feature]
        scores += self.intercept
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        total = scores[:, 0].copy()
        for column in range(1, scores.shape[1]):
            total += scores[:, column]
        scores /= total[:, None]
        return scores

    def save(self, path: Path | str) -> None:
        """Plain arrays in an `.npz`: loading them runs no pickled code."""
        np.savez(path, **asdict(self))

    @classmethod
    def load(cls, path: Path | str) -> SoftmaxLinearModel:
        with np.load(path, allow_pickle=False) as arrays:
            return cls(**{field.name: arrays[field.name] for field in fields(cls)})


def load_predict_proba(model_dir: Path) -> tuple[PredictProba, str]:
    """The stored model's `predict_proba`, and which implementation it is: numpy when it can."""
    if (model_dir / LINEAR_FILE).exists():
        return SoftmaxLinearModel.load(model_dir / LINEAR_FILE).predict_proba, "numpy"
    # Imported here, not at the top: unpickling a pipeline imports scikit-learn (about a second
    # per worker), which models with a numpy form never need.
    import joblib

    return joblib.load(model_dir / PIPELINE_FILE).predict_proba, "scikit-learn"


class ModelUnreadable(BentoMLException):
    """The model store entry lacks the file a worker loads, or holds one it cannot read; BentoML's
    CLI prints it as one line and exits 1."""


def require_model_files(tag: str, model_dir: Path) -> None:
    """Refuse, before any worker starts, a store entry that no worker could load. The numpy
    arrays are loaded (a millisecond); a pipeline is only read, since unpickling it would import
    scikit-learn into the supervisor."""
    path = model_dir / (LINEAR_FILE if (model_dir / LINEAR_FILE).exists() else PIPELINE_FILE)
    try:
        if path.name == LINEAR_FILE:
            SoftmaxLinearModel.load(path)
        else:
            with path.open("rb") as pipeline:
                pipeline.read(1)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        reason = (
            error.strerror if isinstance(error, OSError) else str(error) or type(error).__name__
        )
        raise ModelUnreadable(
            f"{tag}: {path.name} in the model store cannot be read ({reason}): register the "
            "model again (make train) or serve another version (IRIS_MODEL_TAG)"
        ) from None
