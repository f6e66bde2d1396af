"""The numpy path against scikit-learn itself, and the fall-back to the pipeline."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import bentoml
import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import train
from iris_bento.features import LINEAR_FILE, MAX_CM, MIN_CM, PIPELINE_FILE
from iris_bento.inference import SoftmaxLinearModel, load_predict_proba


def probe_rows() -> list[np.ndarray]:
    """All Iris rows, one row alone, and random rows across the valid range (a seed that
    training's own check does not use)."""
    iris_rows = load_iris().data
    random_rows = np.random.default_rng(2026).uniform(MIN_CM, MAX_CM, size=(10_000, 4))
    return [iris_rows, iris_rows[:1], random_rows]


def test_the_registered_model_is_served_by_numpy(model_tag: str) -> None:
    model = bentoml.models.get(model_tag)
    assert model.info.metadata["inference"] == "numpy"
    _, inference = load_predict_proba(Path(model.path))
    assert inference == "numpy"


def test_the_numpy_path_gives_the_pipelines_probabilities(model_tag: str, pipeline: Any) -> None:
    predict_proba, _ = load_predict_proba(Path(bentoml.models.get(model_tag).path))
    for rows in probe_rows():
        expected = pipeline.predict_proba(rows)
        got = predict_proba(rows)
        np.testing.assert_allclose(got, expected, rtol=0, atol=train.NUMPY_FORM_TOLERANCE)
        np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))


def test_the_numpy_form_round_trips_through_its_file(pipeline: Any, tmp_path: Path) -> None:
    form = SoftmaxLinearModel.from_pipeline(pipeline)
    assert form is not None
    form.save(tmp_path / LINEAR_FILE)
    loaded = SoftmaxLinearModel.load(tmp_path / LINEAR_FILE)
    rows = load_iris().data
    np.testing.assert_array_equal(loaded.predict_proba(rows), form.predict_proba(rows))


def test_other_estimators_are_served_by_their_pipeline(tmp_path: Path) -> None:
    args = train.parse_args(["--estimator", "random_forest", "--n-estimators", "5"])
    iris = load_iris()
    forest = train.build_pipeline(args).fit(iris.data, iris.target)
    assert SoftmaxLinearModel.from_pipeline(forest) is None
    joblib.dump(forest, tmp_path / PIPELINE_FILE)

    predict_proba, inference = load_predict_proba(tmp_path)
    assert inference == "scikit-learn"
    for rows in probe_rows():
        np.testing.assert_array_equal(predict_proba(rows), forest.predict_proba(rows))


# Rows of four measurements in the range the API accepts, as clients send them.
MEASUREMENTS = st.floats(MIN_CM, MAX_CM, allow_nan=False, allow_infinity=False)
BATCHES = st.integers(1, 600).flatmap(
    lambda rows: arrays(np.float64, (rows, 4), elements=MEASUREMENTS)
)


def assert_rows_computed_alone(predict_proba: Any, batch: np.ndarray) -> None:
    """Each row of the batch's output equals, bit for bit, that row computed alone."""
    together = predict_proba(batch)
    for position, row in enumerate(batch):
        alone = predict_proba(row[None, :])[0]
        assert together[position].tobytes() == alone.tobytes(), (
            position,
            together[position],
            alone,
        )


@settings(max_examples=60, deadline=None)
@given(batch=BATCHES, start=st.integers(0, 7))
def test_a_rows_probabilities_do_not_depend_on_its_batch(
    model_tag: str, batch: np.ndarray, start: int
) -> None:
    """Alone, in a batch of any size, at any position, at any offset in memory: the same bits."""
    predict_proba, _ = load_predict_proba(Path(bentoml.models.get(model_tag).path))
    assert_rows_computed_alone(predict_proba, batch[start:] if start < len(batch) else batch)


@settings(max_examples=15, deadline=None)
@given(batch=BATCHES)
def test_a_forests_probabilities_do_not_depend_on_its_batch(batch: np.ndarray) -> None:
    assert_rows_computed_alone(small_forest().predict_proba, batch)


@functools.cache
def small_forest() -> Any:
    iris = load_iris()
    args = train.parse_args(["--estimator", "random_forest", "--n-estimators", "5"])
    return train.build_pipeline(args).fit(iris.data, iris.target)


@pytest.mark.parametrize(
    ("scaler", "classes"),
    [
        (StandardScaler(with_mean=False), 3),  # fits mean_ but never subtracts it
        (StandardScaler(with_std=False), 3),
        (StandardScaler(), 2),  # a sigmoid, not a softmax
    ],
    ids=["without-mean", "without-std", "two-classes"],
)
def test_pipelines_that_compute_otherwise_have_no_numpy_form(
    scaler: StandardScaler, classes: int
) -> None:
    iris = load_iris()
    keep = iris.target < classes
    pipeline = make_pipeline(scaler, LogisticRegression(max_iter=1000))
    pipeline.fit(iris.data[keep], iris.target[keep])
    assert SoftmaxLinearModel.from_pipeline(pipeline) is None


def test_arrays_that_do_not_fit_together_are_refused(pipeline: Any) -> None:
    form = SoftmaxLinearModel.from_pipeline(pipeline)
    assert form is not None
    with pytest.raises(ValueError, match="inconsistent arrays"):
        SoftmaxLinearModel(form.mean[:3], form.scale, form.coef, form.intercept)
    with pytest.raises(ValueError, match="inconsistent arrays"):
        SoftmaxLinearModel(form.mean, form.scale, form.coef, form.intercept[:2])


def test_a_numpy_form_that_disagrees_is_not_stored(
    pipeline: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    form = SoftmaxLinearModel.from_pipeline(pipeline)
    assert form is not None
    assert train.verified_numpy_form(pipeline, load_iris().data, seed=1) is not None

    nudge = np.zeros_like(form.intercept)
    nudge[0] = 1e-9  # one class only: a shift of every class would leave the softmax unchanged
    skewed = SoftmaxLinearModel(form.mean, form.scale, form.coef, form.intercept + nudge)
    monkeypatch.setattr(SoftmaxLinearModel, "from_pipeline", staticmethod(lambda _: skewed))
    assert train.verified_numpy_form(pipeline, load_iris().data, seed=1) is None
    assert "the service will use scikit-learn" in capsys.readouterr().err
