"""The trained model: quality gate, registered metadata, and behaviour on clear cases."""

from __future__ import annotations

import itertools
from typing import Any

import bentoml
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

import train
from iris_bento.features import CLASS_NAMES, FEATURE_NAMES

# Textbook specimens of each species (measurements in cm).
CLEAR_EXAMPLES = {
    "setosa": [5.0, 3.4, 1.5, 0.2],
    "versicolor": [6.0, 2.8, 4.3, 1.3],
    "virginica": [7.0, 3.1, 6.0, 2.3],
}


def label_of(pipeline: Any, row: list[float]) -> str:
    return CLASS_NAMES[int(pipeline.predict(np.array([row]))[0])]


def test_registered_model_passes_the_quality_gate(model_tag: str) -> None:
    metrics = bentoml.models.get(model_tag).info.metadata["metrics"]
    assert metrics["accuracy"] >= 0.90
    assert metrics["f1_macro"] >= 0.90
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["test_rows"] == 30


def test_metadata_describes_model_data_and_environment(model_tag: str) -> None:
    metadata = bentoml.models.get(model_tag).info.metadata
    assert metadata["feature_names"] == list(FEATURE_NAMES)
    assert metadata["class_names"] == list(CLASS_NAMES)
    assert set(metadata["training_feature_stats"]) == set(FEATURE_NAMES)
    for stats in metadata["training_feature_stats"].values():
        assert stats["min"] <= stats["mean"] <= stats["max"]
        assert stats["std"] > 0
    assert metadata["training_data_hash"].startswith("sha256:")
    assert metadata["hyperparameters"] == {"C": 1.0, "max_iter": 1000, "random_state": 42}
    assert metadata["seed"] == 42
    for key in ("python_version", "sklearn_version", "numpy_version"):
        assert metadata[key]


def test_quality_gate_refuses_to_register(model_tag: str, capsys: pytest.CaptureFixture) -> None:
    versions_before = {str(m.tag) for m in bentoml.models.list("iris_clf")}
    assert train.main(["--min-accuracy", "1.01"]) == 1
    assert "quality gate failed" in capsys.readouterr().err
    assert {str(m.tag) for m in bentoml.models.list("iris_clf")} == versions_before


def test_training_data_hash_identifies_the_split(model_tag: str) -> None:
    iris = load_iris()

    def split_hash(seed: int) -> str:
        x_train, _, y_train, _ = train_test_split(
            iris.data, iris.target, test_size=0.2, stratify=iris.target, random_state=seed
        )
        return train.data_hash(x_train, y_train)

    recorded = bentoml.models.get(model_tag).info.metadata["training_data_hash"]
    assert recorded == split_hash(42)
    assert recorded != split_hash(7)


@pytest.mark.parametrize(("label", "row"), CLEAR_EXAMPLES.items())
def test_clear_example_of_each_class(pipeline: Any, label: str, row: list[float]) -> None:
    assert label_of(pipeline, row) == label


@pytest.mark.parametrize(("label", "row"), CLEAR_EXAMPLES.items())
def test_small_perturbations_keep_a_confident_label(
    pipeline: Any, label: str, row: list[float]
) -> None:
    for deltas in itertools.product((-0.1, 0.0, 0.1), repeat=4):
        perturbed = [value + delta for value, delta in zip(row, deltas, strict=True)]
        assert label_of(pipeline, perturbed) == label, perturbed


def test_the_random_forest_passes_the_quality_gate_on_held_out_rows() -> None:
    args = train.parse_args(["--estimator", "random_forest", "--n-estimators", "20"])
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, iris.target, test_size=0.2, stratify=iris.target, random_state=args.seed
    )
    pipeline = train.build_pipeline(args).fit(x_train, y_train)
    assert train.evaluate(pipeline, x_test, y_test)["accuracy"] >= args.min_accuracy
