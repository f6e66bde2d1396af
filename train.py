"""Train the Iris classifier, evaluate it on a held-out split, and register it in the BentoML store.

Preprocessing and estimator are one scikit-learn Pipeline, so the scaler travels with the model
and the service can never apply a different preprocessing than training did. A logistic regression
is also stored as its plain arrays, which the service evaluates with numpy (iris_bento.inference),
once they are shown to give the pipeline's probabilities.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from typing import Any

import bentoml
import joblib
import numpy as np
import sklearn
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iris_bento.drift import decile_bins
from iris_bento.features import (
    CLASS_NAMES,
    FEATURE_NAMES,
    LINEAR_FILE,
    MAX_CM,
    MIN_CM,
    MODEL_NAME,
    PIPELINE_FILE,
)
from iris_bento.inference import SoftmaxLinearModel

ESTIMATORS = ("logistic_regression", "random_forest")
# The numpy form is stored only if its probabilities are this close to the pipeline's, on every
# Iris row and on this many random rows across the valid range.
NUMPY_FORM_TOLERANCE = 1e-12
NUMPY_FORM_RANDOM_ROWS = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Every choice that changes the model is a flag, and every flag lands in the metadata."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=42, help="split and estimator seed")
    parser.add_argument("--test-size", type=float, default=0.2, help="held-out fraction")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="logistic_regression")
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation strength")
    parser.add_argument("--max-iter", type=int, default=1000, help="solver iterations")
    parser.add_argument("--n-estimators", type=int, default=100, help="trees (random_forest)")
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=0.90,
        help="quality gate: refuse to register below this held-out accuracy",
    )
    return parser.parse_args(argv)


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The estimator's hyperparameters, as passed to it and as recorded in the metadata."""
    if args.estimator == "random_forest":
        return {"n_estimators": args.n_estimators, "random_state": args.seed}
    return {"C": args.C, "max_iter": args.max_iter, "random_state": args.seed}


def build_pipeline(args: argparse.Namespace) -> Pipeline:
    """Scaler and estimator as one object: the unit that is saved, loaded and served."""
    params = hyperparameters(args)
    estimator: Any = (
        RandomForestClassifier(**params)
        if args.estimator == "random_forest"
        else LogisticRegression(**params)
    )
    return Pipeline([("scaler", StandardScaler()), ("classifier", estimator)])


def evaluate(pipeline: Pipeline, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Held-out metrics, in plain types so they can be stored as model metadata."""
    predicted = pipeline.predict(x_test)
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
        "confusion_matrix": confusion_matrix(y_test, predicted, labels=[0, 1, 2]).tolist(),
        "test_rows": len(y_test),
    }


def format_report(metrics: dict[str, Any]) -> str:
    """A confusion matrix a person can read: rows are true classes, columns predicted ones."""
    width = max(len(name) for name in CLASS_NAMES) + 2
    lines = [
        f"held-out rows: {metrics['test_rows']}",
        f"accuracy:      {metrics['accuracy']:.4f}",
        f"macro F1:      {metrics['f1_macro']:.4f}",
        "confusion matrix (rows: true, columns: predicted)",
        " " * width + "".join(name.rjust(width) for name in CLASS_NAMES),
    ]
    for name, row in zip(CLASS_NAMES, metrics["confusion_matrix"], strict=True):
        lines.append(name.ljust(width) + "".join(str(count).rjust(width) for count in row))
    return "\n".join(lines)


def feature_summary(x_train: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-feature statistics of the training data, for drift checks against live traffic."""
    return {
        name: {
            "min": float(column.min()),
            "max": float(column.max()),
            "mean": float(column.mean()),
            "std": float(column.std()),
        }
        for name, column in zip(FEATURE_NAMES, x_train.T, strict=True)
    }


def class_shares(y_train: np.ndarray) -> list[float]:
    """The share of each class in the training data: the class mix live answers are held to."""
    return (np.bincount(y_train, minlength=len(CLASS_NAMES)) / len(y_train)).tolist()


def data_hash(features: np.ndarray, target: np.ndarray) -> str:
    """A fingerprint of the exact training data, so a model can be traced back to it."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(features, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(target, dtype=np.int64).tobytes())
    return f"sha256:{digest.hexdigest()}"


def verified_numpy_form(
    pipeline: Pipeline, known_rows: np.ndarray, seed: int
) -> SoftmaxLinearModel | None:
    """The numpy form, if there is one and it agrees with the pipeline; the service falls back to
    the pipeline otherwise, so a scikit-learn that computes differently costs speed, not truth."""
    form = SoftmaxLinearModel.from_pipeline(pipeline)
    if form is None:
        return None
    random_rows = np.random.default_rng(seed).uniform(
        MIN_CM, MAX_CM, size=(NUMPY_FORM_RANDOM_ROWS, len(FEATURE_NAMES))
    )
    rows = np.vstack([known_rows, random_rows])
    error = float(np.abs(form.predict_proba(rows) - pipeline.predict_proba(rows)).max())
    if error > NUMPY_FORM_TOLERANCE:
        print(
            f"warning: the numpy form differs from the pipeline by {error:.1e}; "
            "the service will use scikit-learn",
            file=sys.stderr,
        )
        return None
    return form


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate, gate, register; print the new tag. Non-zero exit when the gate fails."""
    args = parse_args(argv)
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data,
        iris.target,
        test_size=args.test_size,
        stratify=iris.target,
        random_state=args.seed,
    )
    pipeline = build_pipeline(args).fit(x_train, y_train)
    metrics = evaluate(pipeline, x_test, y_test)
    print(format_report(metrics))

    if metrics["accuracy"] < args.min_accuracy:
        print(
            f"quality gate failed: held-out accuracy {metrics['accuracy']:.4f} is below "
            f"--min-accuracy {args.min_accuracy:.4f}; the model was not registered",
            file=sys.stderr,
        )
        return 1

    numpy_form = verified_numpy_form(pipeline, iris.data, args.seed)
    metadata = {
        "metrics": metrics,
        "feature_names": list(FEATURE_NAMES),
        "class_names": list(CLASS_NAMES),
        "training_feature_stats": feature_summary(x_train),
        "training_feature_bins": {
            name: decile_bins(column) for name, column in zip(FEATURE_NAMES, x_train.T, strict=True)
        },
        "training_class_shares": class_shares(y_train),
        "training_data_hash": data_hash(x_train, y_train),
        "training_rows": len(y_train),
        "estimator": args.estimator,
        "hyperparameters": hyperparameters(args),
        "inference": "numpy" if numpy_form else "scikit-learn",
        "seed": args.seed,
        "test_size": args.test_size,
        "python_version": platform.python_version(),
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
    }
    with bentoml.models.create(
        MODEL_NAME,
        metadata=metadata,
        labels={"task": "classification", "dataset": "iris", "estimator": args.estimator},
    ) as model:
        joblib.dump(pipeline, model.path_of(PIPELINE_FILE))
        if numpy_form:
            numpy_form.save(model.path_of(LINEAR_FILE))
    print(f"registered {model.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
