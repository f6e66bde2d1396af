"""The HTTP contract, in process: every status, error body, validation rule and auth case."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import API_KEYS, bentoml_endpoints_only, example
from sklearn.datasets import load_iris

from iris_bento.features import CLASS_NAMES, FEATURE_NAMES
from iris_bento.schemas import MAX_ERROR_DETAILS, MAX_FIELD_CHARS, BatchPrediction, Prediction

JSON = {"content-type": "application/json"}
# What must never reach a client: tracebacks, source paths, version numbers; and in error bodies,
# the names of the libraries underneath (metric names on /metrics may name BentoML).
LEAKS = re.compile(r"Traceback|File \"|\.py\b|site-packages|\d+\.\d+\.\d+")
ERROR_LEAKS = re.compile(LEAKS.pattern + r"|pydantic|bentoml|starlette")


@pytest.fixture(scope="module", params=["fast-path", "bentoml-endpoint"])
def client(request: pytest.FixtureRequest, service_client: Any) -> Iterator[Any]:
    """Every test here runs through both ways a request reaches the endpoints."""
    if request.param == "fast-path":
        yield service_client
    else:
        with bentoml_endpoints_only(service_client):
            yield service_client


def assert_error(response: Any, status: int) -> Any:
    """The error contract: JSON with exactly error, code and details; nothing leaked."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "code", "details"}
    assert body["code"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert not ERROR_LEAKS.search(response.text), response.text
    return body["details"]


def post(client: Any, path: str, payload: Any, headers: dict[str, str]) -> Any:
    return client.post(path, content=json.dumps(payload), headers={**JSON, **headers})


def assert_matches(result: dict[str, Any], probabilities: np.ndarray) -> None:
    """Labels exact, probabilities within 1e-9 of the registered pipeline's."""
    assert result["label"] == CLASS_NAMES[int(probabilities.argmax())]
    assert result["probability"] == pytest.approx(probabilities.max(), abs=1e-9)
    assert list(result["probabilities"]) == list(CLASS_NAMES)
    got = np.array([result["probabilities"][name] for name in CLASS_NAMES])
    np.testing.assert_allclose(got, probabilities, rtol=0, atol=1e-9)


# --- health and public paths ---------------------------------------------------------------


def test_health_is_public_and_describes_the_model(client: Any, model_tag: str) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model": "iris_clf",
        "model_version": model_tag.split(":")[1],
        "classes": list(CLASS_NAMES),
        "features": list(FEATURE_NAMES),
    }


@pytest.mark.parametrize(
    "path", ["/health", "/livez", "/readyz", "/healthz", "/metrics", "/schema.json"]
)
def test_public_paths_answer_without_a_key_and_leak_nothing(client: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert not LEAKS.search(response.text), LEAKS.search(response.text)


@pytest.mark.parametrize("path", ["/", "/docs.json"])
def test_the_docs_ui_needs_a_key(client: Any, path: str, auth: dict[str, str]) -> None:
    assert_error(client.get(path), 401)
    assert client.get(path, headers=auth).status_code == 200


def test_health_rejects_other_methods(client: Any) -> None:
    assert_error(client.post("/health"), 405)


# --- predict and batch_predict ---------------------------------------------------------------


def test_predict_example(client: Any, auth: dict[str, str], model_tag: str) -> None:
    response = post(client, "/predict", example("predict"), auth)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "label", "probability", "probabilities", "model_version"}
    assert Prediction.model_validate_json(response.content).model_dump() == body
    assert body["id"] == "r1"
    assert body["label"] == "setosa"
    assert body["model_version"] == model_tag.split(":")[1]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)


def test_predict_without_id_answers_null(client: Any, auth: dict[str, str]) -> None:
    response = post(client, "/predict", {"features": [5.1, 3.5, 1.4, 0.2]}, auth)
    assert response.status_code == 200
    assert response.json()["id"] is None


def test_named_features_equal_the_same_list(client: Any, auth: dict[str, str]) -> None:
    named = example("predict_named")
    as_list = {"id": "r2", "features": [named["features"][name] for name in FEATURE_NAMES]}
    assert post(client, "/predict", named, auth).json() == (
        post(client, "/predict", as_list, auth).json()
    )


def test_batch_predict_example_keeps_order(client: Any, auth: dict[str, str]) -> None:
    response = post(client, "/batch_predict", example("batch_predict"), auth)
    assert response.status_code == 200
    assert BatchPrediction.model_validate_json(response.content).model_dump() == response.json()
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["a", "b", "c"]
    assert [r["label"] for r in results] == ["setosa", "versicolor", "virginica"]


def test_all_iris_rows_match_the_registered_pipeline(
    client: Any, auth: dict[str, str], pipeline: Any
) -> None:
    rows = load_iris().data
    expected = pipeline.predict_proba(rows)
    items = [{"id": str(i), "features": row.tolist()} for i, row in enumerate(rows)]
    batch = post(client, "/batch_predict", {"items": items}, auth).json()["results"]
    for i, item in enumerate(items):
        single = post(client, "/predict", item, auth).json()
        assert single["id"] == batch[i]["id"] == str(i)
        assert_matches(single, expected[i])
        assert_matches(batch[i], expected[i])


def test_random_valid_inputs_match_the_registered_pipeline(
    client: Any, auth: dict[str, str], pipeline: Any
) -> None:
    rows = np.random.default_rng(7).uniform(0.0, 100.0, size=(500, 4)).round(3)
    items = [{"features": row.tolist()} for row in rows]
    results = post(client, "/batch_predict", {"items": items}, auth).json()["results"]
    for result, probabilities in zip(results, pipeline.predict_proba(rows), strict=True):
        assert_matches(result, probabilities)


def test_batch_accepts_the_item_limit(client: Any, auth: dict[str, str]) -> None:
    items = [{"features": [5.1, 3.5, 1.4, 0.2]}] * 1000
    response = post(client, "/batch_predict", {"items": items}, auth)
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1000


# --- validation --------------------------------------------------------------------------------

GOOD = [5.1, 3.5, 1.4, 0.2]
NAMED = dict(zip(FEATURE_NAMES, GOOD, strict=True))

INVALID_PREDICT_BODIES = {
    "three values": ({"features": GOOD[:3]}, "features"),
    "five values": ({"features": [*GOOD, 1.0]}, "features"),
    "boolean": ({"features": [5.1, True, 1.4, 0.2]}, "features[1]"),
    "string": ({"features": ["5.1", 3.5, 1.4, 0.2]}, "features[0]"),
    "null": ({"features": [5.1, 3.5, None, 0.2]}, "features[2]"),
    "nested list": ({"features": [[5.1], 3.5, 1.4, 0.2]}, "features[0]"),
    "negative": ({"features": [5.1, 3.5, 1.4, -0.2]}, "features[3]"),
    "implausibly large": ({"features": [5.1, 3.5, 140.0, 0.2]}, "features[2]"),
    "overflow to infinity": ({"features": [1e400, 3.5, 1.4, 0.2]}, "features[0]"),
    "features missing": ({"id": "x"}, "features"),
    "features a number": ({"features": 5.1}, "features"),
    "unknown field": ({"features": GOOD, "model": "other"}, "model"),
    "named feature missing": ({"features": {**NAMED, "petal_width": None}}, "features.petal_width"),
    "unknown named feature": ({"features": {**NAMED, "stem": 1.0}}, "features.stem"),
    "id too long": ({"id": "x" * 129, "features": GOOD}, "id"),
    "id not a string": ({"id": 7, "features": GOOD}, "id"),
}


@pytest.mark.parametrize(
    ("payload", "field"), INVALID_PREDICT_BODIES.values(), ids=INVALID_PREDICT_BODIES.keys()
)
def test_invalid_predict_bodies(
    client: Any, auth: dict[str, str], payload: Any, field: str
) -> None:
    details = assert_error(post(client, "/predict", payload, auth), 400)
    assert field in [d["field"] for d in details], details


@pytest.mark.parametrize(
    "raw",
    [
        b'{"features": [NaN, 3.5, 1.4, 0.2]}',
        b'{"features": [Infinity, 3.5, 1.4, 0.2]}',
        b'{"features": [5.1, 3.5',
        b"[5.1, 3.5, 1.4, 0.2]",
        b'"features"',
    ],
)
def test_malformed_or_non_object_bodies(client: Any, auth: dict[str, str], raw: bytes) -> None:
    details = assert_error(client.post("/predict", content=raw, headers={**JSON, **auth}), 400)
    assert details and all({"field", "message"} == set(d) for d in details)


def test_batch_names_each_bad_item_by_index_and_field(client: Any, auth: dict[str, str]) -> None:
    items = [{"features": GOOD}, {"features": [5.1, "x", 1.4, 0.2]}, {"features": GOOD[:2]}]
    details = assert_error(post(client, "/batch_predict", {"items": items}, auth), 400)
    assert {d["field"] for d in details} == {"items[1].features[1]", "items[2].features"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"features": GOOD}] * 1001}, "items"),
        ({"items": [{"features": GOOD, "x": 1}]}, "items[0].x"),
        ({}, "items"),
    ],
    ids=["empty", "over the item limit", "unknown item field", "items missing"],
)
def test_invalid_batches(client: Any, auth: dict[str, str], payload: Any, field: str) -> None:
    details = assert_error(post(client, "/batch_predict", payload, auth), 400)
    assert field in [d["field"] for d in details], details


def test_a_body_of_many_problems_lists_the_first_hundred_and_counts_the_rest(
    client: Any, auth: dict[str, str]
) -> None:
    unknown = {f"field_{index}": 0 for index in range(250)}
    long_name = "x" * 5000
    payload = {"features": GOOD, long_name: 0, **unknown}
    response = post(client, "/predict", payload, auth)
    details = assert_error(response, 400)
    assert len(details) == MAX_ERROR_DETAILS + 1
    assert details[-1] == {"field": "body", "message": "151 more problems, not listed"}
    assert details[0]["field"] == "x" * (MAX_FIELD_CHARS - 3) + "..."
    assert len(response.content) < 10_000


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/batch_predict"])
def test_a_key_is_required(client: Any, path: str) -> None:
    response = post(client, path, example("predict"), {})
    assert_error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_wrong_key_is_refused(client: Any) -> None:
    assert_error(post(client, "/predict", example("predict"), {"x-api-key": "wrong"}), 401)


@pytest.mark.parametrize("key", API_KEYS)
def test_every_configured_key_works_in_both_headers(client: Any, key: str) -> None:
    for headers in ({"x-api-key": key}, {"authorization": f"Bearer {key}"}):
        assert post(client, "/predict", example("predict"), headers).status_code == 200


def test_unknown_paths_are_protected_too(client: Any) -> None:
    assert_error(client.get("/no-such-path"), 401)


def test_a_cors_preflight_passes_auth(client: Any) -> None:
    preflight = {"origin": "http://localhost:8080", "access-control-request-method": "POST"}
    assert client.options("/predict", headers=preflight).status_code != 401


# --- other statuses and headers ----------------------------------------------------------------


def test_unknown_path_is_a_json_404(client: Any, auth: dict[str, str]) -> None:
    assert_error(client.get("/no-such-path", headers=auth), 404)


def test_wrong_method_is_a_json_405(client: Any, auth: dict[str, str]) -> None:
    assert_error(client.get("/predict", headers=auth), 405)


def test_non_json_content_type_is_a_415(client: Any, auth: dict[str, str]) -> None:
    response = client.post(
        "/predict", content=b"5.1,3.5,1.4,0.2", headers={"content-type": "text/csv", **auth}
    )
    assert_error(response, 415)


@pytest.mark.parametrize("encoding", ["gzip", "br, gzip"])
def test_a_compressed_body_is_a_415(client: Any, auth: dict[str, str], encoding: str) -> None:
    body = gzip.compress(json.dumps(example("predict")).encode())
    headers = {**JSON, **auth, "content-encoding": encoding}
    details = assert_error(client.post("/predict", content=body, headers=headers), 415)
    assert "Content-Encoding" in details


def test_an_identity_content_encoding_is_plain_json(client: Any, auth: dict[str, str]) -> None:
    headers = {**JSON, **auth, "content-encoding": "identity"}
    body = json.dumps(example("predict")).encode()
    assert client.post("/predict", content=body, headers=headers).status_code == 200


def test_oversized_body_is_a_413(client: Any, auth: dict[str, str]) -> None:
    body = json.dumps({"items": [{"features": GOOD}] * 40_000}).encode()
    assert len(body) > 1024 * 1024
    assert_error(client.post("/batch_predict", content=body, headers={**JSON, **auth}), 413)


def test_oversized_chunked_body_is_a_413(client: Any, auth: dict[str, str]) -> None:
    def chunks() -> Any:
        for _ in range(20):
            yield b" " * 65536

    response = client.post("/batch_predict", content=chunks(), headers={**JSON, **auth})
    assert "content-length" not in response.request.headers
    assert_error(response, 413)


def test_request_id_is_echoed_or_made(client: Any, auth: dict[str, str]) -> None:
    echoed = post(client, "/predict", example("predict"), {**auth, "x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    made = client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert client.get("/nope").headers["x-request-id"]


def test_metrics_expose_the_batch_size_histogram(client: Any, auth: dict[str, str]) -> None:
    post(client, "/predict", example("predict"), auth)
    assert "iris_model_batch_rows_bucket" in client.get("/metrics").text
