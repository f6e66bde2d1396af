"""What the model metrics (iris_bento/metrics.py) cost a request: in process, and over HTTP.

In process (always): CPU time of what the batcher records per model call, with the model
metrics (answers per class, decile histograms, out of range, call time, rows per call, queue
rows) and without them (rows per call only, as before), for calls of 1 to 1000 rows, in
prometheus_client's multi-process mode as in the server. Over HTTP (`--base DIR`, a checkout of
the code before the metrics): both servers serve the same freshly trained model, and wrk sends
this benchmark's `/predict` body to each in turn; server CPU per request from /proc.
Rounds alternate between the two variants; medians and ranges over rounds.

Run with the project's venv, from the repository root:
    .venv/bin/python -m bench.metrics_cost [--rounds 7] [--base DIR] [--seconds 8]
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from bench import load, payloads

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZES = (1, 8, 64, 256, 1000)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} [{min(values):,.1f} to {max(values):,.1f}]"


def cpu_us_per_call(call: Callable[[], object], calls: int) -> float:
    for _ in range(200):
        call()
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls * 1e6


def in_process(rounds: int) -> None:
    """The recording a model call does, with and without the model metrics."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-cost-")
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="metrics-cost-home-")
    # Imported after the directory is set: prometheus_client picks its storage at import.
    import bentoml
    import train
    from iris_bento.inference import load_predict_proba
    from iris_bento.metrics import ModelMetrics, TrainingProfile

    train.main([])
    model = bentoml.models.get("iris_clf:latest")
    predict_proba, inference = load_predict_proba(Path(model.path))
    metrics = ModelMetrics(
        TrainingProfile.from_metadata(model.info.metadata),
        model.info.metadata["class_names"],
        model.tag.version or "",
        inference,
    )
    print("in process: CPU µs per model call, median [range] over rounds")
    print(
        "| rows per call | without (rows per call only) | with the model metrics | added per row |"
    )
    print("|---|---|---|---|")
    for size in BATCH_SIZES:
        rows = np.array([payloads.row(i) for i in range(size)])
        output = predict_proba(rows)
        calls = max(20_000 // size, 500)

        def without(rows: np.ndarray = rows) -> None:
            metrics.batch_rows.observe(len(rows))

        def with_metrics(rows: np.ndarray = rows, output: np.ndarray = output) -> None:
            metrics.queue_changed(len(rows))
            metrics.model_called(rows, output, 1e-4)
            metrics.queue_changed(0)

        before, after = [], []
        for _ in range(rounds):
            before.append(cpu_us_per_call(without, calls))
            after.append(cpu_us_per_call(with_metrics, calls))
        added = [(a - b) / size for a, b in zip(after, before, strict=True)]
        print(f"| {size} | {spread(before)} | {spread(after)} | {spread(added)} |")


def start(directory: Path, home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        BENTOML_HOME=str(home),
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_CONFIG=str(directory / "configuration.yaml"),
        IRIS_API_KEYS=payloads.API_KEY,
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", "service:IrisClassifier"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=directory,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except requests.RequestException:
            time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"{directory} did not start: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def over_http(base: Path, rounds: int, seconds: int) -> None:
    """wrk against the code before the metrics and this tree, alternating, one at a time."""
    scratch = Path(tempfile.mkdtemp(prefix="metrics-cost-http-"))
    home = scratch / "home"
    subprocess.run(
        [sys.executable, "train.py"],
        cwd=ROOT,
        env=dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true"),
        check=True,
        capture_output=True,
    )
    body = scratch / "predict.json"
    body.write_bytes(payloads.contract_bodies()["predict"])
    variants = {"without": base, "with": ROOT}
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(rounds):
        order = list(variants.items())[:: 1 if round_ % 2 == 0 else -1]
        for name, directory in order:
            port = 3900 + round_ * 2 + (name == "with")
            process = start(directory, home, port, scratch / f"{name}-{round_}.log")
            try:
                url = f"http://127.0.0.1:{port}/predict"
                load.wrk(url, body, 16, 2)  # warm-up
                for connections in (64, 1):
                    figures = load.measure(process.pid, url, body, connections, seconds)
                    if figures["http_4xx_5xx"] or figures["socket_errors"]:
                        raise RuntimeError(f"{name}: errors under load: {figures}")
                    results.setdefault((name, connections), []).append(figures)
            finally:
                stop(process)
    print(f"\nover HTTP: /predict, {rounds} alternating rounds of {seconds} s, median [range]")
    print("| variant | connections | server CPU µs/request | requests/s | p99 ms | others' CPU % |")
    print("|---|---|---|---|---|---|")
    for (name, connections), runs in sorted(results.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        cpu = [r["server_cpu_us_per_request"] for r in runs]
        rps = [r["requests_per_s"] for r in runs]
        p99 = [r["p99_ms"] for r in runs]
        others = [r["others_cpu_pct"] for r in runs]
        print(
            f"| {name} | {connections} | {spread(cpu)} | {spread(rps)} | {spread(p99)} "
            f"| {spread(others)} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--base", type=Path, help="a checkout of the code before the metrics")
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    args = parser.parse_args(argv)
    in_process(args.rounds)
    if args.base:
        over_http(args.base.resolve(), args.rounds, args.seconds)


if __name__ == "__main__":
    main()
