"""The request bodies every load test sends, and the contract's names, in one place for the
harness, the peers, wrk and the smoke checks.

Rows are real Iris measurements (one per class, then small deterministic offsets), so every
server does the same work on valid input and the answers can be checked.
"""

import json
from pathlib import Path

API_KEY = "bench-key-7f3a9c1e5b"
KEY_HEADER = "x-api-key"
CLASSES = ("setosa", "versicolor", "virginica")
BATCH_ROWS = 1000
MLSERVER_MODEL = "iris"

_BASE_ROWS = ((5.1, 3.5, 1.4, 0.2), (5.9, 3.0, 4.2, 1.5), (6.9, 3.1, 5.4, 2.1))


def row(i: int) -> list[float]:
    """Row `i` of the synthetic workload: an Iris flower nudged by a few millimetres."""
    base = _BASE_ROWS[i % len(_BASE_ROWS)]
    nudge = ((i * 7) % 11 - 5) / 50
    return [round(v + nudge, 2) for v in base]


def record(i: int) -> dict[str, object]:
    """One contract record, as `/predict` takes it and `/batch_predict` lists it."""
    return {"id": f"r{i}", "features": row(i)}


def contract_bodies() -> dict[str, bytes]:
    """Bodies of the contract: one record for `/predict`, 1000 for `/batch_predict`."""
    items = [record(i) for i in range(BATCH_ROWS)]
    return {
        "predict": json.dumps(record(0)).encode(),
        "batch": json.dumps({"items": items}).encode(),
    }


def _v2(rows: list[list[float]], tensor: str, output: str) -> bytes:
    body = {
        "inputs": [
            {
                "name": tensor,
                "shape": [len(rows), 4],
                "datatype": "FP64",
                "data": [v for r in rows for v in r],
            }
        ],
        "outputs": [{"name": output}],
    }
    return json.dumps(body).encode()


def _v2_bodies(tensor: str, output: str) -> dict[str, bytes]:
    return {
        "predict": _v2([row(0)], tensor, output),
        "batch": _v2([row(i) for i in range(BATCH_ROWS)], tensor, output),
    }


def v2_bodies() -> dict[str, bytes]:
    """The same rows in MLServer's V2 protocol: a flat FP64 tensor, without ids, asking for
    the probabilities only."""
    return _v2_bodies("input-0", "predict_proba")


def project_v2_bodies() -> dict[str, bytes]:
    """The same V2 bodies with the project's tensor and output names."""
    return _v2_bodies("features", "probabilities")


def body_set(protocol: str) -> str:
    """Which bodies a server of this protocol takes (the fixed-answer ceilings take the
    contract's)."""
    return "contract" if protocol == "fixed" else protocol


def write_bodies(folder: Path) -> dict[str, dict[str, Path]]:
    """Write every body to `folder` for wrk; return {protocol: {kind: path}}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, dict[str, Path]] = {}
    for protocol, bodies in (
        ("contract", contract_bodies()),
        ("v2", v2_bodies()),
        ("project-v2", project_v2_bodies()),
    ):
        for kind, body in bodies.items():
            path = folder / f"{protocol}-{kind}.json"
            path.write_bytes(body)
            paths.setdefault(protocol, {})[kind] = path
    return paths
