"""The model's metrics: drift arithmetic alone, then what the real server exports after traffic."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest
import requests
from helpers import API_KEYS, ROOT, RunningServer, bentoml_serve, example, start_server
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families

from iris_bento.drift import bin_shares, decile_bins, psi, shares_from_cumulative
from iris_bento.features import CLASS_NAMES, FEATURE_NAMES
from iris_bento.metrics import (
    SMALL_BATCH_ROWS,
    ModelMetrics,
    TrainingProfile,
    histogram_values,
)

AUTH = {"x-api-key": API_KEYS[0]}


def test_bins_follow_prometheus_le_and_hold_the_training_shares() -> None:
    values = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 10.0])
    bins = decile_bins(values)
    assert bins["bounds"] == sorted(set(bins["bounds"])), "unique, increasing bounds"
    assert len(bins["shares"]) == len(bins["bounds"]) + 1
    assert sum(bins["shares"]) == pytest.approx(1)
    # A value equal to a bound belongs to that bound's bucket (le), as in Prometheus.
    np.testing.assert_array_equal(bin_shares(np.array([2.0]), [2.0, 3.0]), [1, 0, 0])
    np.testing.assert_array_equal(bin_shares(np.array([2.5]), [2.0, 3.0]), [0, 1, 0])


def test_psi_is_zero_for_the_training_mix_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    training = rng.normal(4.0, 1.0, 5000)
    bins = decile_bins(training)
    same = bin_shares(rng.normal(4.0, 1.0, 5000), bins["bounds"])
    shifted = bin_shares(rng.normal(6.0, 1.0, 5000), bins["bounds"])
    assert psi(bins["shares"], bins["shares"]) == 0
    assert psi(same, bins["shares"]) < 0.05
    assert psi(shifted, bins["shares"]) > 1
    # Cumulative bucket counts, as /metrics gives them, back to shares.
    np.testing.assert_allclose(shares_from_cumulative([2, 5, 5, 10]), [0.2, 0.3, 0, 0.5])


@pytest.fixture(scope="module")
def profile() -> TrainingProfile:
    rng = np.random.default_rng(2)
    training = rng.uniform(1, 7, size=(200, len(FEATURE_NAMES))).round(1)
    return TrainingProfile(
        minimum=training.min(axis=0),
        maximum=training.max(axis=0),
        bins={name: decile_bins(training[:, j]) for j, name in enumerate(FEATURE_NAMES)},
        class_shares=None,
    )


def test_a_batch_records_in_the_feature_histograms_what_observe_would(
    profile: TrainingProfile,
) -> None:
    """Fails if prometheus_client changes the histogram internals `histogram_values` uses, or
    if the binning disagrees with Prometheus's `le` (values on a bound included), in the
    small-batch loop or in numpy."""
    metrics = ModelMetrics(profile, CLASS_NAMES, "test", "numpy")
    rng = np.random.default_rng(3)
    bounds = np.array([profile.bins[name]["bounds"] for name in FEATURE_NAMES], dtype=object)
    on_bounds = np.array([[b[i % len(b)] for b in bounds] for i in range(12)])
    rows = np.vstack([rng.uniform(0, 9, size=(50, 4)).round(1), on_bounds])
    for size in (1, SMALL_BATCH_ROWS, len(rows)):
        metrics.flush()
        before = [[b.get() for b in histogram_values(h)[0]] for h in metrics.feature_histograms]
        for start in range(0, len(rows), size):
            metrics.model_called(rows[start : start + size], rng.random((size, 3)), 0.001)
        metrics.flush()
        for j, name in enumerate(FEATURE_NAMES):
            reference = Histogram(
                f"test_reference_{name}_{size}",
                "",
                buckets=profile.bins[name]["bounds"],
                registry=None,
            )
            for value in rows[:, j]:
                reference.observe(float(value))
            buckets, _ = histogram_values(metrics.feature_histograms[j])
            added = [b.get() - old for b, old in zip(buckets, before[j], strict=True)]
            assert added == [b.get() for b in reference._buckets], (name, size)
    metrics.close()


def scrape(url: str) -> dict[str, list[Any]]:
    """Every sample of /metrics, by sample name."""
    samples: dict[str, list[Any]] = {}
    text = requests.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list[Any]], name: str) -> float:
    return sum(sample.value for sample in samples.get(name, []))


def scrape_when(url: str, arrived: Callable[[dict[str, list[Any]]], bool]) -> dict[str, list[Any]]:
    """/metrics once the counts have arrived: the workers write them about once a second."""
    deadline = time.monotonic() + 10
    while not arrived(samples := scrape(url)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return samples


def by_labels(samples: list[Any], *names: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[name] for name in names): s.value for s in samples}


@pytest.mark.server
def test_the_server_exports_what_the_model_answered_and_was_asked(
    server: RunningServer, model_tag: str
) -> None:
    """Answers per class, values per training decile and out of range, from both workers."""
    metadata = bentoml.models.get(model_tag).info.metadata
    before = scrape(server.url)
    rows = np.array(
        [
            [5.1, 3.5, 1.4, 0.2],
            [5.9, 2.8, 4.3, 1.3],
            [6.9, 3.1, 5.8, 2.2],
            [5.0, 3.0, 9.5, 1.0],  # out of the training range, still valid
            [4.0, 1.0, 0.5, 3.0],
        ]
    )
    answers = []
    for _ in range(20):  # several requests: both workers serve some
        for row in rows:
            response = requests.post(
                f"{server.url}/predict", json={"features": row.tolist()}, headers=AUTH, timeout=10
            )
            assert response.status_code == 200, response.text
            answers.append(response.json()["label"])
    batch = requests.post(
        f"{server.url}/batch_predict",
        json={"items": [{"features": row.tolist()} for row in rows]},
        headers=AUTH,
        timeout=10,
    )
    answers += [result["label"] for result in batch.json()["results"]]
    sent = np.vstack([rows] * 21)
    after = scrape_when(
        server.url,
        lambda samples: (
            total(samples, "iris_predictions_total")
            == len(answers) + total(before, "iris_predictions_total")
        ),
    )

    def increase(name: str, *labels: str) -> dict[tuple[str, ...], float]:
        old = by_labels(before.get(name, []), *labels)
        return {k: v - old.get(k, 0) for k, v in by_labels(after[name], *labels).items()}

    predictions = increase("iris_predictions_total", "label")
    assert {k: v for k, v in predictions.items() if v} == {
        (label,): float(answers.count(label)) for label in set(answers)
    }
    stats = metadata["training_feature_stats"]
    out_of_range = increase("iris_feature_out_of_range_total", "feature", "side")
    for index, name in enumerate(FEATURE_NAMES):
        column = sent[:, index]
        assert out_of_range.get((name, "below"), 0) == (column < stats[name]["min"]).sum()
        assert out_of_range.get((name, "above"), 0) == (column > stats[name]["max"]).sum()
    buckets = increase("iris_feature_value_bucket", "feature", "le")
    for index, name in enumerate(FEATURE_NAMES):
        bounds = metadata["training_feature_bins"][name]["bounds"]
        cumulative = [buckets[(name, le)] for le in sorted_les(buckets, name)]
        expected = bin_shares(sent[:, index], bounds)
        np.testing.assert_allclose(shares_from_cumulative(cumulative), expected)
    # The rules join training shares to buckets on `le` and `lower_le`: same strings.
    for name in FEATURE_NAMES:
        edges = {
            s.labels["le"]
            for s in after["iris_feature_value_bucket"]
            if s.labels["feature"] == name
        }
        training_edges = [
            s.labels for s in after["iris_feature_training_share"] if s.labels["feature"] == name
        ]
        assert {labels["le"] for labels in training_edges} == edges
        assert {labels["lower_le"] for labels in training_edges} - {""} < edges
    shares = by_labels(after["iris_feature_training_share"], "feature", "bin")
    for name in FEATURE_NAMES:
        training = metadata["training_feature_bins"][name]["shares"]
        assert [shares[(name, str(k + 1))] for k in range(len(training))] == training
    priors = by_labels(after["iris_model_training_class_share"], "label")
    assert priors == {(label,): 1 / 3 for label in CLASS_NAMES}
    info = after["iris_model_info"]
    assert {s.labels["model_version"] for s in info} == {model_tag.split(":")[1]}
    assert {s.labels["inference"] for s in info} == {"numpy"}
    assert len({s.labels["pid"] for s in info}) == 2, "one series per worker"
    calls = increase("iris_model_call_seconds_count")[()]
    assert calls == increase("iris_model_batch_rows_count")[()] >= 21
    assert after["iris_batch_queue_rows"][0].value == 0, "nothing waits between requests"


def sorted_les(buckets: dict[tuple[str, ...], float], feature: str) -> list[str]:
    return sorted((le for f, le in buckets if f == feature), key=float)


@pytest.fixture(scope="module")
def model_without_deciles(model_tag: str) -> str:
    """The served model re-registered as a model from before train.py stored deciles and class
    shares (under another name, so `iris_clf:latest` stays the tests' model)."""
    source = bentoml.models.get(model_tag)
    metadata = {
        k: v
        for k, v in source.info.metadata.items()
        if k not in ("training_feature_bins", "training_class_shares")
    }
    with bentoml.models.create("iris_clf_before_deciles", metadata=metadata) as model:
        for path in Path(source.path).iterdir():
            if path.is_file() and path.name != "model.yaml":
                Path(model.path_of(path.name)).write_bytes(path.read_bytes())
    return str(model.tag)


@pytest.fixture(scope="module")
def older_model_server(
    model_without_deciles: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with start_server(
        bentoml_serve("service:IrisClassifier"),
        cwd=ROOT,
        log_dir=tmp_path_factory.mktemp("older-model"),
        env={"IRIS_MODEL_TAG": model_without_deciles},
    ) as running:
        yield running


@pytest.mark.server
def test_a_model_without_deciles_serves_without_drift_series(
    older_model_server: RunningServer,
) -> None:
    response = requests.post(
        f"{older_model_server.url}/predict", json=example("predict"), headers=AUTH, timeout=10
    )
    assert response.status_code == 200, response.text
    samples = scrape_when(
        older_model_server.url, lambda found: total(found, "iris_predictions_total") == 1
    )
    assert total(samples, "iris_predictions_total") == 1
    assert "iris_feature_out_of_range_total" in samples
    for absent in (
        "iris_feature_value_bucket",
        "iris_feature_training_share",
        "iris_model_training_class_share",
    ):
        assert absent not in samples
    deadline = time.monotonic() + 30  # the second worker may still be starting
    while len(warnings(older_model_server)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(warnings(older_model_server)) == 2, "one warning per worker"


def warnings(server: RunningServer) -> list[str]:
    return [line for line in server.log_lines() if "no training deciles" in line]


@pytest.mark.server
def test_the_drift_drill_sees_the_shift(server: RunningServer, tmp_path: Path) -> None:
    """A short drill against the real server: petal lengths 2 cm longer move the PSI past the
    alert's 0.25 and the out-of-range share past 5%; Iris-like traffic before does neither."""
    from scripts import drift_drill

    plot = tmp_path / "drill.png"
    figures = tmp_path / "drill.json"
    argv = ["--url", server.url, "--api-key", API_KEYS[0], "--phase-s", "6", "--window-s", "4"]
    argv += ["--scrape-s", "0.5", "--rate", "60", "--plot", str(plot), "--json", str(figures)]
    assert drift_drill.main(argv) == 0
    result = json.loads(figures.read_text())
    before, after = result["before_shift"], result["after_shift"]
    assert result["failed"] == 0
    assert before["rows"] > 100 and after["rows"] > 100
    assert before["t"] <= result["shift_at_s"] < after["from_t"]
    assert before["psi"]["petal_length"] < 0.25 < after["psi"]["petal_length"]
    assert before["out_of_range"]["petal_length"] < 0.05 < after["out_of_range"]["petal_length"]
    assert after["psi"]["sepal_width"] < 0.25, "the other features did not move"
    assert plot.read_bytes().startswith(b"\x89PNG")
