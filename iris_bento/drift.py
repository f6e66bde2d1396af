"""Input drift against the training data: decile bins and the population stability index (PSI).

`train.py` stores, per feature, the training deciles (as bin upper bounds) and the share of
training values in each bin; the service's `iris_feature_value` histogram uses the same bounds,
so the live share of each bin can be set against the training share. The alert rules
(deploy/prometheus/rules/iris-drift.yml) compute the same PSI in PromQL; the drift drill and the
tests compute it here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypedDict

import numpy as np

DECILES: Final = tuple(k / 10 for k in range(1, 10))
# Shares are floored at this before the PSI's logarithm, so that an empty bin (live or in
# training) counts as a large shift rather than an infinite one. The rules use the same floor.
SHARE_FLOOR: Final = 1e-4


class FeatureBins(TypedDict):
    """Bins of one feature: `bounds` are the upper bounds of all bins but the last (which is
    unbounded), `shares` the training share of each bin (one more entry than `bounds`)."""

    bounds: list[float]
    shares: list[float]


def decile_bins(values: np.ndarray) -> FeatureBins:
    """Bins at the training deciles. The deciles are taken among observed values
    (`inverted_cdf`), so that every bin but the last holds at least its own upper bound; tied
    deciles (measurements come in 0.1 cm steps) are merged, and the shares say how much each
    bin really holds."""
    bounds = np.unique(np.quantile(values, DECILES, method="inverted_cdf"))
    return {"bounds": bounds.tolist(), "shares": bin_shares(values, bounds).tolist()}


def bin_indices(values: np.ndarray, bounds: Sequence[float] | np.ndarray) -> np.ndarray:
    """The bin of each value, as a Prometheus histogram counts it: bin k holds the values above
    bound k-1 and at most bound k (`le`)."""
    return np.searchsorted(bounds, values, side="left")


def bin_shares(values: np.ndarray, bounds: Sequence[float] | np.ndarray) -> np.ndarray:
    """The share of `values` in each bin."""
    counts = np.bincount(bin_indices(values, bounds), minlength=len(bounds) + 1)
    return counts / max(len(values), 1)


def shares_from_cumulative(cumulative: Sequence[float]) -> np.ndarray:
    """Per-bin shares from a histogram's cumulative bucket counts (`_bucket{le=...}` in order,
    `+Inf` last), as scraped from /metrics."""
    counts = np.diff(np.asarray(cumulative, dtype=float), prepend=0.0)
    total = counts.sum()
    return counts / total if total > 0 else counts


def psi(live: Sequence[float] | np.ndarray, training: Sequence[float] | np.ndarray) -> float:
    """Population stability index: sum over bins of (live - training) * ln(live / training).
    Read as usual: under 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a large one."""
    observed = np.maximum(np.asarray(live, dtype=float), SHARE_FLOOR)
    expected = np.maximum(np.asarray(training, dtype=float), SHARE_FLOOR)
    return float(np.sum((observed - expected) * np.log(observed / expected)))
