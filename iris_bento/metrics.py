"""The project's Prometheus metrics: what the model answers, what it is asked, and how its calls
and queue behave, next to BentoML's request metrics on the same `/metrics`.

Recorded once per model call (a batch), not per request: numpy bins every row of the batch at
once and each counter moves once per label that occurs, so a request costs a few microseconds
(docs/performance.md gives the measurement). Labels come from fixed sets only (features, classes,
`below`/`above`, the model's version), so the number of series is bounded.

BentoML runs prometheus_client in multi-process mode: every worker writes its values to files in
`PROMETHEUS_MULTIPROC_DIR`, and `/metrics`, on any worker, reads the files of all of them. So
metrics are made inside the worker, after BentoML has set that directory (prometheus_client picks
its storage when first imported), and registration in a registry does not matter: the files are
what is served. docs/monitoring.md documents every metric, rule and panel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from iris_bento.drift import FeatureBins, bin_indices
from iris_bento.features import FEATURE_NAMES

if TYPE_CHECKING:
    from prometheus_client import Gauge, Histogram

log = logging.getLogger("iris_bento.metrics")

SIDES: Final = ("below", "above")
BATCH_ROWS_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
MODEL_CALL_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


@dataclass(frozen=True)
class TrainingProfile:
    """What the model's metadata says about its training data. A model registered before
    `train.py` stored deciles and class shares has neither: it serves, without the feature
    histogram and the training shares (so no drift or class-mix score for it)."""

    minimum: np.ndarray
    maximum: np.ndarray
    bins: Mapping[str, FeatureBins] | None
    class_shares: Sequence[float] | None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> TrainingProfile:
        stats = metadata["training_feature_stats"]
        return cls(
            minimum=np.array([stats[name]["min"] for name in FEATURE_NAMES]),
            maximum=np.array([stats[name]["max"] for name in FEATURE_NAMES]),
            bins=metadata.get("training_feature_bins"),
            class_shares=metadata.get("training_class_shares"),
        )


def _format_bound(bound: float) -> str:
    """A bucket bound as prometheus_client writes it in `le`, so that the training-share series
    join the histogram's buckets."""
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


def observe_many(histogram: Histogram, bucket_counts: np.ndarray, total: float) -> None:
    """Many observations at once: what `observe` would do for each, as one increment per
    non-empty bucket and one of the sum. prometheus_client has no public call for it, so this
    uses the histogram's own value objects (pinned version; tests/test_metrics.py compares it
    with `observe`)."""
    histogram._sum.inc(total)
    for index in np.flatnonzero(bucket_counts).tolist():
        histogram._buckets[index].inc(int(bucket_counts[index]))


class ModelMetrics:
    """The model's metrics in one worker: made at start, recorded per model call."""

    def __init__(
        self,
        profile: TrainingProfile,
        classes: Sequence[str],
        model_version: str,
        inference: str,
    ) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._profile = profile
        self._classes = tuple(classes)
        self.batch_rows = Histogram(
            "iris_model_batch_rows",
            "Rows per model call (requests coalesced by adaptive batching).",
            buckets=BATCH_ROWS_BUCKETS,
            registry=None,
        )
        self.call_seconds = Histogram(
            "iris_model_call_seconds",
            "Time of one model call (a whole batch), in seconds.",
            buckets=MODEL_CALL_BUCKETS,
            registry=None,
        )
        self.queued_rows = Gauge(
            "iris_batch_queue_rows",
            "Rows waiting in the batching queue, summed over the live workers.",
            multiprocess_mode="livesum",
            registry=None,
        )
        predictions = Counter(
            "iris_predictions", "Answers per predicted class.", ["label"], registry=None
        )
        self._predictions = [predictions.labels(label=name) for name in self._classes]
        out_of_range = Counter(
            "iris_feature_out_of_range",
            "Values below the training minimum or above the training maximum, per feature.",
            ["feature", "side"],
            registry=None,
        )
        self._below = [out_of_range.labels(feature=name, side="below") for name in FEATURE_NAMES]
        self._above = [out_of_range.labels(feature=name, side="above") for name in FEATURE_NAMES]
        info = Gauge(
            "iris_model_info",
            "The served model (value 1), one series per live worker (label pid).",
            ["model_version", "inference"],
            multiprocess_mode="liveall",
            registry=None,
        )
        info.labels(model_version=model_version, inference=inference).set(1)
        self._features: list[Histogram] = []
        self._bounds: list[np.ndarray] = []
        if profile.bins is None:
            log.warning(
                "the model's metadata has no training deciles: no iris_feature_value histogram "
                "and no drift score; retrain with this project's train.py to have them"
            )
        else:
            self._make_feature_histograms(profile.bins, Gauge, Histogram)
        if profile.class_shares is not None:
            class_share = Gauge(
                "iris_model_training_class_share",
                "Share of each class in the training data, for the class-mix rules.",
                ["label"],
                multiprocess_mode="max",
                registry=None,
            )
            for name, share in zip(self._classes, profile.class_shares, strict=True):
                class_share.labels(label=name).set(share)

    def _make_feature_histograms(
        self, bins: Mapping[str, FeatureBins], gauge: type[Gauge], histogram: type[Histogram]
    ) -> None:
        """One histogram per feature, each with its own training deciles as buckets (one
        prometheus_client histogram has one set of buckets for all its label sets, and in
        multi-process mode the files merge them under one name), and the training share of each
        bin, labelled with its upper and lower bucket bound so that rules can join the two."""
        training_share = gauge(
            "iris_feature_training_share",
            "Share of training values in each bin of iris_feature_value (bin k: above the "
            "bound lower_le, at most the bound le).",
            ["feature", "bin", "le", "lower_le"],
            multiprocess_mode="max",
            registry=None,
        )
        for name in FEATURE_NAMES:
            bounds, shares = bins[name]["bounds"], bins[name]["shares"]
            self._bounds.append(np.array(bounds))
            self._features.append(
                histogram(
                    "iris_feature_value",
                    "Input values per feature, in buckets at the training deciles.",
                    ["feature"],
                    buckets=bounds,
                    registry=None,
                ).labels(feature=name)
            )
            edges = [_format_bound(bound) for bound in bounds] + ["+Inf"]
            for index, share in enumerate(shares):
                training_share.labels(
                    feature=name,
                    bin=str(index + 1),
                    le=edges[index],
                    lower_le=edges[index - 1] if index else "",
                ).set(share)

    def model_called(self, rows: np.ndarray, output: np.ndarray, seconds: float) -> None:
        """One model call: its size and time, the classes it answered, the inputs it saw."""
        self.batch_rows.observe(len(rows))
        self.call_seconds.observe(seconds)
        answers = np.bincount(output.argmax(axis=1), minlength=len(self._classes))
        for index in np.flatnonzero(answers).tolist():
            self._predictions[index].inc(int(answers[index]))
        below = (rows < self._profile.minimum).sum(axis=0)
        above = (rows > self._profile.maximum).sum(axis=0)
        for index in np.flatnonzero(below).tolist():
            self._below[index].inc(int(below[index]))
        for index in np.flatnonzero(above).tolist():
            self._above[index].inc(int(above[index]))
        if self._features:
            totals = rows.sum(axis=0).tolist()
            for index, histogram in enumerate(self._features):
                bounds = self._bounds[index]
                counts = np.bincount(bin_indices(rows[:, index], bounds), minlength=len(bounds) + 1)
                observe_many(histogram, counts, totals[index])

    def queue_changed(self, queued_rows: int) -> None:
        self.queued_rows.set(queued_rows)


def forget_worker(pid: int, multiproc_dir: str | None) -> None:
    """Called by the supervisor when a worker dies: its live-only series (`iris_model_info`,
    `iris_batch_queue_rows`) leave /metrics, so that a dead worker is seen as missing."""
    if multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, multiproc_dir)
