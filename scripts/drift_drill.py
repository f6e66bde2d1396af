"""Drift drill: send a running service Iris-like traffic, then the same with petal lengths 2 cm
longer, scrape /metrics throughout, and compute what the alert rules compute (PSI per feature,
out-of-range share, class-mix shift) over a sliding window. Prints the figures as JSON and draws
them (docs/monitoring.md shows the picture and says what an operator does when the alert fires).

    make serve                                   # in another terminal (IRIS_API_KEYS set)
    .venv/bin/python -m scripts.drift_drill --api-key KEY --plot docs/drift-drill.png

The rules use a one-hour window; the drill uses a short one (--window-s), so that it runs in
minutes. The training bins and class shares are read from /metrics, as the rules read them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

from iris_bento.drift import psi, shares_from_cumulative
from iris_bento.features import FEATURE_NAMES
from iris_bento.metrics import FLUSH_S

SHIFTED_FEATURE = "petal_length"


@dataclass
class Scrape:
    """The counters of one /metrics read, summed over workers (and labels not kept)."""

    at: float
    buckets: dict[str, dict[float, float]] = field(default_factory=lambda: defaultdict(dict))
    out_of_range: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    predictions: dict[str, float] = field(default_factory=lambda: defaultdict(float))


@dataclass
class Training:
    bin_shares: dict[str, list[float]]
    class_shares: dict[str, float]


def scrape(url: str) -> tuple[Scrape, Training]:
    found = Scrape(time.monotonic())
    bins: dict[str, dict[int, float]] = defaultdict(dict)
    classes: dict[str, float] = {}
    text = requests.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "iris_feature_value_bucket":
                found.buckets[labels["feature"]][float(labels["le"])] = sample.value
            elif sample.name == "iris_feature_out_of_range_total":
                found.out_of_range[labels["feature"]] += sample.value
            elif sample.name == "iris_predictions_total":
                found.predictions[labels["label"]] += sample.value
            elif sample.name == "iris_feature_training_share":
                bins[labels["feature"]][int(labels["bin"])] = sample.value
            elif sample.name == "iris_model_training_class_share":
                classes[labels["label"]] = sample.value
    if not bins or not classes:
        raise SystemExit("the served model has no training deciles: retrain it with train.py")
    shares = {name: [bins[name][k] for k in sorted(bins[name])] for name in bins}
    return found, Training(shares, classes)


def window_figures(old: Scrape, new: Scrape, training: Training) -> dict[str, Any]:
    """What the recording rules compute, over the time between two scrapes."""
    rows = sum(new.predictions.values()) - sum(old.predictions.values())
    figures: dict[str, Any] = {"t": new.at, "rows": rows, "psi": {}, "out_of_range": {}}
    for name in FEATURE_NAMES:
        bounds = sorted(new.buckets[name])
        increase = [new.buckets[name][b] - old.buckets[name].get(b, 0.0) for b in bounds]
        figures["psi"][name] = psi(shares_from_cumulative(increase), training.bin_shares[name])
        outside = new.out_of_range[name] - old.out_of_range[name]
        figures["out_of_range"][name] = outside / rows if rows else 0.0
    mix = {
        label: (new.predictions[label] - old.predictions[label]) / rows if rows else 0.0
        for label in training.class_shares
    }
    figures["class_mix"] = mix
    figures["class_mix_shift"] = 0.5 * sum(
        abs(mix[label] - share) for label, share in training.class_shares.items()
    )
    return figures


class Traffic:
    """Clients sending /predict with Iris rows, the shifted feature moved by `shift_cm`."""

    def __init__(self, url: str, api_key: str, rate: float, clients: int = 4) -> None:
        self.url, self.api_key, self.rate, self.clients = url, api_key, rate, clients
        self.shift_cm = 0.0
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._rows = load_iris().data
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]

    def _client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        session = requests.Session()
        pause = self.clients / self.rate
        column = FEATURE_NAMES.index(SHIFTED_FEATURE)
        with session:
            while not self._stop.wait(pause):
                row = self._rows[rng.integers(len(self._rows))].copy()
                row[column] += self.shift_cm
                response = session.post(
                    f"{self.url}/predict",
                    json={"features": row.round(2).tolist()},
                    headers={"x-api-key": self.api_key},
                    timeout=10,
                )
                with self._lock:
                    self.sent += 1
                    self.failed += response.status_code != 200

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def drill(args: argparse.Namespace) -> dict[str, Any]:
    """Two phases of traffic, scraped every `scrape_s`; figures over a sliding window. The shifted
    phase lasts `phase_s` and until one whole window holds shifted traffic only (counts reach
    /metrics up to FLUSH_S late, so the window starts that much after the shift)."""
    scrapes: list[Scrape] = []
    series: list[dict[str, Any]] = []
    _, training = scrape(args.url)
    with Traffic(args.url, args.api_key, args.rate) as traffic:
        start = time.monotonic()
        deadline = start + 2 * args.phase_s + 3 * args.window_s + 60
        shifted_at: float | None = None
        while True:
            now = time.monotonic()
            if shifted_at is None and now >= start + args.phase_s:
                traffic.shift_cm, shifted_at = args.shift_cm, now
            found, _ = scrape(args.url)
            scrapes.append(found)
            old = next(s for s in scrapes if s.at >= found.at - args.window_s)
            if found.at - old.at >= args.window_s * 0.9:
                figures = window_figures(old, found, training)
                figures["t"], figures["from_t"] = found.at - start, old.at - start
                series.append(figures)
            if (
                shifted_at is not None
                and now >= shifted_at + args.phase_s
                and series[-1]["from_t"] >= shifted_at - start + FLUSH_S
            ):
                break
            if now > deadline:
                raise SystemExit("/metrics answered too slowly for a window after the shift")
            time.sleep(args.scrape_s)
    shift_s = shifted_at - start
    before = [f for f in series if f["t"] <= shift_s]
    if not before:
        raise SystemExit("no full window before the shift: make --phase-s longer than --window-s")
    return {
        "settings": {
            key: getattr(args, key)
            for key in ("phase_s", "window_s", "scrape_s", "rate", "shift_cm")
        },
        "shift_at_s": shift_s,
        "shifted_feature": SHIFTED_FEATURE,
        "training_class_shares": training.class_shares,
        "requests": traffic.sent,
        "failed": traffic.failed,
        "before_shift": before[-1],
        "after_shift": series[-1],
        "series": series,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Score, out-of-range share and class mix over time, the shift marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    t = [f["t"] for f in series]
    figure, axes = plt.subplots(3, 1, figsize=(9, 8.5), sharex=True)
    for name in FEATURE_NAMES:
        axes[0].plot(t, [f["psi"][name] for f in series], label=name)
        axes[1].plot(t, [f["out_of_range"][name] * 100 for f in series], label=name)
    axes[0].axhline(0.25, color="red", linestyle=":", label="alert above 0.25")
    axes[0].set_ylabel("PSI against training")
    axes[0].set_yscale("symlog", linthresh=0.1)
    highest = max(max(f["psi"].values()) for f in series)
    axes[0].set_ylim(0, max(highest, 0.25) * 2)
    axes[1].axhline(5, color="red", linestyle=":", label="alert above 5%")
    axes[1].set_ylabel("values out of training range, %")
    for label, share in result["training_class_shares"].items():
        line = axes[2].plot(t, [f["class_mix"][label] * 100 for f in series], label=label)[0]
        axes[2].axhline(share * 100, color=line.get_color(), linestyle=":", linewidth=1)
    axes[2].set_ylabel("predicted class, % (dotted: training)")
    axes[2].set_xlabel(f"seconds (window {result['settings']['window_s']:g} s; the rules use 1 h)")
    for axis in axes:
        axis.axvline(result["shift_at_s"], color="grey", linestyle="--")
        axis.legend(loc="upper left", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0].set_title(
        f"Drift drill: {result['shifted_feature']} +{result['settings']['shift_cm']:g} cm "
        f"from {result['shift_at_s']:.0f} s (dashed line)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("IRIS_API_KEYS", "").split(",")[0],
        help="default: the first of IRIS_API_KEYS",
    )
    parser.add_argument("--phase-s", type=float, default=120, help="seconds before the shift")
    parser.add_argument("--window-s", type=float, default=60, help="window of the figures")
    parser.add_argument("--scrape-s", type=float, default=3, help="seconds between scrapes")
    parser.add_argument("--rate", type=float, default=40, help="requests per second")
    parser.add_argument("--shift-cm", type=float, default=2.0, help=f"added to {SHIFTED_FEATURE}")
    parser.add_argument("--plot", type=Path, help="write the picture here (PNG)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("--api-key or IRIS_API_KEYS is required")
    result = drill(args)
    summary = {k: v for k, v in result.items() if k != "series"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
