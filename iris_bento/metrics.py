"""The project's Prometheus metrics: what the model answers, what it is asked, and how its calls
and queue behave, next to BentoML's request metrics on the same `/metrics`.

Recorded once per model call (a batch), not per request: every value of the batch is binned at
once (numpy, or a Python loop for a few rows) and counted in memory; a thread writes the counts
once a second, one increment per series that moved. So a request costs a few microseconds
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
import threading
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from iris_bento.drift import FeatureBins
from iris_bento.features import FEATURE_NAMES

if TYPE_CHECKING:
    from prometheus_client import Gauge, Histogram

log = logging.getLogger("iris_bento.metrics")

# Answers and inputs are counted in memory and written to the metric files this often: writing
# them per call cost more than everything else the metrics do (docs/performance.md).
FLUSH_S: Final = 1.0
# Up to this many rows a call, a Python loop bins them faster than numpy's calls would.
SMALL_BATCH_ROWS: Final = 4
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


def histogram_values(histogram: Histogram) -> tuple[list[Any], Any]:
    """The value objects behind a histogram's buckets (non-cumulative, `+Inf` last) and its sum,
    so that a whole batch is recorded with one increment per non-empty bucket rather than one
    `observe` per value. prometheus_client has no public call for that; its version is pinned
    and tests/test_metrics.py checks that increments here equal what `observe` records."""
    return histogram._buckets, histogram._sum


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
        out_of_range = Counter(
            "iris_feature_out_of_range",
            "Values below the training minimum or above the training maximum, per feature.",
            ["feature", "side"],
            registry=None,
        )
        below = [out_of_range.labels(feature=name, side="below") for name in FEATURE_NAMES]
        above = [out_of_range.labels(feature=name, side="above") for name in FEATURE_NAMES]
        info = Gauge(
            "iris_model_info",
            "The served model (value 1), one series per live worker (label pid).",
            ["model_version", "inference"],
            multiprocess_mode="liveall",
            registry=None,
        )
        info.labels(model_version=model_version, inference=inference).set(1)
        self.feature_histograms: list[Histogram] = []
        if profile.bins is None:
            log.warning(
                "the model's metadata has no training deciles: no iris_feature_value histogram "
                "and no drift score; retrain with this project's train.py to have them"
            )
        else:
            self._make_feature_histograms(profile.bins, Gauge, Histogram)
        self._make_slots(
            profile, below, above, [predictions.labels(label=name) for name in self._classes]
        )
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
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(
            target=self._flush_every, args=(FLUSH_S,), name="metrics-flush", daemon=True
        ).start()

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
            self.feature_histograms.append(
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

    def _make_slots(
        self, profile: TrainingProfile, below: list[Any], above: list[Any], predictions: list[Any]
    ) -> None:
        """What a model call records, as counts in slots, and the series each slot increments.

        Each value is compared with its feature's thresholds: just below the training minimum,
        the decile bounds, the training maximum. The number of thresholds below it is its slot
        within the feature: 0 below the minimum (first bucket, and `below`), 1 + k in bucket k
        within the range, the last above the maximum (last bucket, and `above`). The predicted
        classes take one slot each after the features' slots."""
        self._thresholds = [
            [
                float(np.nextafter(low, -np.inf)),
                *(profile.bins[name]["bounds"] if profile.bins else []),
                high,
            ]
            for name, low, high in zip(
                FEATURE_NAMES, profile.minimum.tolist(), profile.maximum.tolist(), strict=True
            )
        ]
        # The same, padded with infinity (never below a value) to one array for numpy.
        width = max(len(t) for t in self._thresholds) + 1
        self._padded_thresholds = np.array(
            [t[:-1] + [np.inf] * (width - len(t)) + t[-1:] for t in self._thresholds]
        )
        self._feature_offsets = list(range(0, width * len(FEATURE_NAMES), width))
        self._class_offset = width * len(FEATURE_NAMES)
        self._slot_series: list[tuple[Any, ...]] = []
        self._sum_values: list[Any] = []
        for j, thresholds in enumerate(self._thresholds):
            if self.feature_histograms:
                buckets, total = histogram_values(self.feature_histograms[j])
                in_range = [(bucket,) for bucket in buckets]
                self._sum_values.append(total)
            else:
                in_range = [()] * (len(thresholds) - 1)
            self._slot_series += [
                (below[j], *in_range[0]),
                *in_range,
                (above[j], *in_range[-1]),
                *[()] * (width - len(thresholds) - 1),
            ]
        self._slot_series += [(series,) for series in predictions]
        self._pending_counts = [0] * len(self._slot_series)
        self._pending_sums = [0.0] * len(FEATURE_NAMES)

    def model_called(self, rows: np.ndarray, output: np.ndarray, seconds: float) -> None:
        """One model call: its size and time now; the classes it answered and the inputs it saw
        counted in memory, written by the flush thread."""
        self.batch_rows.observe(len(rows))
        self.call_seconds.observe(seconds)
        if len(rows) <= SMALL_BATCH_ROWS:  # numpy's fixed cost per call exceeds the loop's
            answers = output.argmax(axis=1).tolist()
            with self._lock:
                counts, sums = self._pending_counts, self._pending_sums
                for row in rows.tolist():
                    for feature, (offset, thresholds, value) in enumerate(
                        zip(self._feature_offsets, self._thresholds, row, strict=True)
                    ):
                        counts[offset + bisect_left(thresholds, value)] += 1
                        sums[feature] += value
                for answer in answers:
                    counts[self._class_offset + answer] += 1
            return
        per_value = (rows[:, :, np.newaxis] > self._padded_thresholds).sum(axis=2)
        answers = output.argmax(axis=1) + self._class_offset
        every = np.bincount(
            np.concatenate([(per_value + self._feature_offsets).ravel(), answers]),
            minlength=len(self._slot_series),
        )
        totals = rows.sum(axis=0).tolist()
        with self._lock:
            for slot in np.flatnonzero(every).tolist():
                self._pending_counts[slot] += int(every[slot])
            for feature, total in enumerate(totals):
                self._pending_sums[feature] += total

    def flush(self) -> None:
        """Write the counts gathered since the last flush: one increment per series that
        moved (so the files are written about once a second, not once a request)."""
        with self._lock:
            counts, self._pending_counts = self._pending_counts, [0] * len(self._pending_counts)
            sums, self._pending_sums = self._pending_sums, [0.0] * len(self._pending_sums)
        for slot, count in enumerate(counts):
            if count:
                for series in self._slot_series[slot]:
                    series.inc(count)
        # No sums to write for a model without deciles (no histogram): zip stops at once.
        for value, total in zip(self._sum_values, sums, strict=False):
            value.inc(total)

    def _flush_every(self, seconds: float) -> None:
        while not self._stopped.wait(seconds):
            self.flush()

    def close(self) -> None:
        """Stop the flush thread and write what is left (on worker shutdown)."""
        self._stopped.set()
        self.flush()

    def queue_changed(self, queued_rows: int) -> None:
        self.queued_rows.set(queued_rows)


def forget_worker(pid: int, multiproc_dir: str | None) -> None:
    """Called by the supervisor when a worker dies: its live-only series (`iris_model_info`,
    `iris_batch_queue_rows`) leave /metrics, so that a dead worker is seen as missing."""
    if multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, multiproc_dir)
