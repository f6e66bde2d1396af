"""The real server: `bentoml serve` as a subprocess, spoken to over HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
import numpy as np
import pytest
import requests
from helpers import (
    API_KEYS,
    ROOT,
    RunningServer,
    bentoml_serve,
    example,
    read_answer,
    records,
    refused_start,
    start_server,
)
from sklearn.datasets import load_iris

from iris_bento.features import CLASS_NAMES, MAX_CM, MIN_CM
from iris_bento.inference import load_predict_proba

pytestmark = pytest.mark.server

AUTH = {"x-api-key": API_KEYS[0], "content-type": "application/json"}
CLIENTS = 64
REQUESTS_PER_CLIENT = 8


def batch_histogram(url: str) -> tuple[float, float, float]:
    """(model calls, rows, calls of exactly one row) from the project's histogram in /metrics."""
    text = requests.get(f"{url}/metrics", timeout=5).text

    def value(pattern: str) -> float:
        return sum(float(v) for v in re.findall(pattern + r"\S* (\S+)", text, re.MULTILINE))

    return (
        value(r"^iris_model_batch_rows_count"),
        value(r"^iris_model_batch_rows_sum"),
        value(r'^iris_model_batch_rows_bucket\{le="1\.0"'),
    )


async def concurrent_predictions(url: str, rows: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
    """CLIENTS connections at once, each sending its own rows with its own ids."""

    async def one_client(session: aiohttp.ClientSession, client: int) -> list[Any]:
        answers = []
        for n in range(REQUESTS_PER_CLIENT):
            request_id = f"c{client}-{n}"
            row = rows[(client * REQUESTS_PER_CLIENT + n) % len(rows)]
            payload = {"id": request_id, "features": row.tolist()}
            async with session.post(f"{url}/predict", json=payload, headers=AUTH) as response:
                assert response.status == 200, await response.text()
                answers.append((request_id, await response.json()))
        return answers

    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        per_client = await asyncio.gather(*(one_client(session, c) for c in range(CLIENTS)))
    return [answer for answers in per_client for answer in answers]


def test_contract_over_http(server: RunningServer) -> None:
    health = requests.get(f"{server.url}/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    predicted = requests.post(f"{server.url}/predict", json=example("predict"), headers=AUTH)
    assert (predicted.status_code, predicted.json()["label"]) == (200, "setosa")
    batch = requests.post(
        f"{server.url}/batch_predict", json=example("batch_predict"), headers=AUTH
    )
    assert [r["id"] for r in batch.json()["results"]] == ["a", "b", "c"]
    assert requests.post(f"{server.url}/predict", json=example("predict")).status_code == 401
    assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200


def test_bad_input_never_hurts_the_server(server: RunningServer) -> None:
    bodies = [b"", b"{", b"\xff\xfe", b"[]" * 1000, b'{"features": [' + b"1," * 5000 + b"1]}"]
    for body in bodies:
        response = requests.post(f"{server.url}/predict", data=body, headers=AUTH, timeout=5)
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error", "code", "details"}
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def test_concurrent_predictions_are_batched_without_cross_talk(
    server: RunningServer, pipeline: Any
) -> None:
    calls_before, rows_before, singles_before = batch_histogram(server.url)
    rows = load_iris().data
    answers = asyncio.run(concurrent_predictions(server.url, rows))
    calls, rows_computed, singles = (
        after - before
        for after, before in zip(
            batch_histogram(server.url), (calls_before, rows_before, singles_before), strict=True
        )
    )

    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    expected = pipeline.predict_proba(rows)
    for request_id, answer in answers:
        assert answer["id"] == request_id
        client, n = (int(part) for part in request_id[1:].split("-"))
        reference = expected[(client * REQUESTS_PER_CLIENT + n) % len(rows)]
        assert answer["label"] == CLASS_NAMES[int(reference.argmax())]
        got = [answer["probabilities"][name] for name in CLASS_NAMES]
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-9)

    assert rows_computed == len(answers)
    assert calls < rows_computed, "every model call held a single row: nothing was batched"
    assert singles < calls, "no model call held more than one row"


def test_every_route_and_worker_gives_each_row_the_same_bits(
    server: RunningServer, model_tag: str
) -> None:
    """A row's probabilities are those of the row computed alone, bit for bit: in concurrent
    `/predict`s batched together in either worker, inside a `/batch_predict`, and through V2."""
    predict_proba, _ = load_predict_proba(Path(bentoml.models.get(model_tag).path))
    rows = np.random.default_rng(15).uniform(
        MIN_CM, MAX_CM, size=(CLIENTS * REQUESTS_PER_CLIENT, 4)
    )
    alone = [predict_proba(row[None, :])[0].tolist() for row in rows]

    answers = asyncio.run(concurrent_predictions(server.url, rows))
    for request_id, answer in answers:
        client, n = (int(part) for part in request_id[1:].split("-"))
        got = [answer["probabilities"][name] for name in CLASS_NAMES]
        assert got == alone[client * REQUESTS_PER_CLIENT + n], request_id
    answered_by = {
        line["pid"] for line in records(server) if line.get("request_id", "").startswith("c")
    }
    assert len(answered_by) == 2, "one worker answered every request"

    items = [{"features": row.tolist()} for row in rows[:300]]
    batch = requests.post(f"{server.url}/batch_predict", json={"items": items}, headers=AUTH)
    got = [
        [result["probabilities"][name] for name in CLASS_NAMES]
        for result in batch.json()["results"]
    ]
    assert got == alone[:300]

    tensor = {
        "name": "features",
        "shape": [300, 4],
        "datatype": "FP64",
        "data": rows[:300].tolist(),
    }
    v2 = requests.post(
        f"{server.url}/v2/models/iris_clf/infer", json={"inputs": [tensor]}, headers=AUTH
    )
    output = next(out for out in v2.json()["outputs"] if out["name"] == "probabilities")
    assert np.reshape(output["data"], (300, 3)).tolist() == alone[:300]


def test_bentoml_client_with_a_token(server: RunningServer) -> None:
    with bentoml.SyncHTTPClient(server.url, token=API_KEYS[1]) as client:
        result = client.predict(id="sdk", features=[6.9, 3.1, 5.8, 2.2])
    answer = result if isinstance(result, dict) else result.model_dump()
    assert (answer["id"], answer["label"]) == ("sdk", "virginica")


def test_the_server_ends_keep_alive_connections_now_and_then(server: RunningServer) -> None:
    """`connections.mean_requests` (100): some answer says `Connection: close`, then it closes."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        for _ in range(2000):
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: iris\r\n\r\n")
            if b"\r\nconnection: close" in read_answer(connection):
                break
        else:
            pytest.fail("2000 answers on one connection, none closing it")
        assert connection.recv(1) == b"", "the server said close but kept the connection open"


def test_logs_are_json_lines_without_feature_values(server: RunningServer) -> None:
    unique_values = [4.3210987, 2.9876543, 1.5554321, 0.4443217]
    headers = {**AUTH, "x-request-id": "log-check-1"}
    requests.post(f"{server.url}/predict", json={"features": unique_values}, headers=headers)
    requests.post(f"{server.url}/predict", json={"features": [*unique_values, 1]}, headers=AUTH)
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in server.log_lines() if line.startswith("{")]
        logged = [r for r in records if r.get("request_id") == "log-check-1"]
        if logged or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    ready = [r for r in records if r["message"] == "service ready"]
    assert len(ready) == 2, "one start-up line per worker"
    assert {"model_tag", "workers", "config_file"} <= set(ready[0])
    assert ready[0]["workers"] == 2
    assert ready[0]["inference"] == "numpy"
    assert len(logged) == 1
    request = logged[0]
    assert (request["path"], request["status"]) == ("/predict", 200)
    assert request["latency_ms"] > 0
    log_text = server.log_path.read_text()
    assert not any(str(value) in log_text for value in unique_values)


def test_sigterm_stops_every_process_cleanly(model_tag: str, tmp_path: Any) -> None:
    with start_server(
        bentoml_serve("service:IrisClassifier"), cwd=ROOT, log_dir=tmp_path
    ) as running:
        requests.post(f"{running.url}/predict", json=example("predict"), headers=AUTH)
        started = time.monotonic()
        assert running.stop() == 0
        assert time.monotonic() - started < 15
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):
            os.killpg(running.process.pid, signal.SIG_DFL)


@pytest.mark.parametrize("keys", [None, " , "], ids=["unset", "blank"])
def test_the_server_refuses_to_start_without_keys(model_tag: str, keys: str | None) -> None:
    env = {name: value for name, value in os.environ.items() if name != "IRIS_API_KEYS"}
    if keys is not None:
        env["IRIS_API_KEYS"] = keys
    assert "IRIS_API_KEYS" in refused_start(env)
