"""Ceiling: the model's own compute, `predict_proba` on 1 and on 1000 rows, timed in-process:
scikit-learn's (what the peers call) and the project's numpy form of the same pipeline.

Run in a peer's venv with BENCH_MODEL_PATH set; prints one JSON line of median microseconds.
"""

import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import joblib
import numpy as np
from iris_bento.inference import SoftmaxLinearModel

from bench import payloads


def median_us(call: Callable[[], object], repeat: int) -> float:
    """Median wall time of `call()` in microseconds, after a few warm-up calls."""
    for _ in range(10):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


if __name__ == "__main__":
    pipeline = joblib.load(os.environ["BENCH_MODEL_PATH"])
    numpy_form = SoftmaxLinearModel.from_pipeline(pipeline)
    if numpy_form is None:
        sys.exit(f"{os.environ['BENCH_MODEL_PATH']} is not a scaled logistic regression")
    one = np.array([payloads.row(0)])
    many = np.array([payloads.row(i) for i in range(payloads.BATCH_ROWS)])
    result = {
        "rows_1_us": median_us(lambda: pipeline.predict_proba(one), 2000),
        "rows_1000_us": median_us(lambda: pipeline.predict_proba(many), 300),
        "numpy_rows_1_us": median_us(lambda: numpy_form.predict_proba(one), 2000),
        "numpy_rows_1000_us": median_us(lambda: numpy_form.predict_proba(many), 300),
    }
    print(json.dumps(result))
