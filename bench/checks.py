"""Contract smoke checks run against each server before it is measured.

A peer that answers faster because it skips the key or validation would make the benchmark
lie; these checks catch that (MLServer has no key check and its own protocol: noted instead).
"""

import json
import urllib.error
import urllib.request

from bench import payloads
from bench.servers import Running


def _post(url: str, body: bytes, key: str | None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers[payloads.KEY_HEADER] = key
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as failed:
        return failed.code, failed.read()


def _contract(running: Running) -> list[str]:
    bodies = payloads.contract_bodies()
    predict, batch = running.url("/predict"), running.url("/batch_predict")
    problems = []
    status, answer = _post(predict, bodies["predict"], payloads.API_KEY)
    if status != 200 or not isinstance(answer, dict) or answer.get("label") not in payloads.CLASSES:
        problems.append(f"/predict answered {status}: {answer!r:.200}")
    status, answer = _post(batch, bodies["batch"], payloads.API_KEY)
    results = answer.get("results") if isinstance(answer, dict) else None
    if status != 200 or not isinstance(results, list) or len(results) != payloads.BATCH_ROWS:
        problems.append(f"/batch_predict answered {status}: {answer!r:.200}")
    status, _ = _post(predict, bodies["predict"], None)
    if status != 401:
        problems.append(f"/predict without a key answered {status}, not 401")
    for bad in (
        {"features": [1, 2, 3]},
        {"features": [1, 2, 3, 1e9]},
        {"x": 1, "features": [1] * 4},
    ):
        status, _ = _post(predict, json.dumps(bad).encode(), payloads.API_KEY)
        if status != 400:
            problems.append(f"/predict with {bad} answered {status}, not 400")
    return problems


def _v2(running: Running, bodies: dict[str, bytes], key: str | None) -> list[str]:
    url = running.url(running.server.paths["predict"])
    problems = []
    for kind, rows in (("predict", 1), ("batch", payloads.BATCH_ROWS)):
        status, answer = _post(url, bodies[kind], key)
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if status != 200 or not outputs or outputs[0].get("shape") != [rows, 3]:
            problems.append(f"V2 {kind} answered {status}: {answer!r:.200}")
    return problems


def check(running: Running) -> list[str]:
    """What the server gets wrong about the contract (empty when it is faithful)."""
    protocol = running.server.protocol
    if protocol == "fixed":
        return []
    if protocol == "v2":
        return _v2(running, payloads.v2_bodies(), None)
    if protocol == "project-v2":
        return _v2(running, payloads.project_v2_bodies(), payloads.API_KEY)
    return _contract(running)
