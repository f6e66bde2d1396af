"""The Open Inference Protocol (V2) routes: in process for every rule, then over HTTP with a real
V2 client (tritonclient's) against the real server, answers equal to `/batch_predict`'s."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
import requests
from helpers import API_KEYS, RunningServer
from sklearn.datasets import load_iris
from test_contract import assert_error

from iris_bento.settings import project_settings

INFER = "/v2/models/iris_clf/infer"
IRIS_ROWS = load_iris().data


def tensor(rows: Any, datatype: str = "FP64", shape: list[int] | None = None) -> dict[str, Any]:
    rows = np.asarray(rows, dtype=float)
    return {
        "name": "features",
        "shape": shape or list(rows.shape),
        "datatype": datatype,
        "data": rows.ravel().tolist(),
    }


def infer(client: Any, auth: dict[str, str], body: Any, path: str = INFER) -> Any:
    return client.post(path, json=body, headers=auth)


def outputs(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return {output["name"]: output for output in response.json()["outputs"]}


@pytest.fixture(scope="module")
def model_version(client: Any) -> str:
    return client.get("/health").json()["model_version"]


# --- metadata and health ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True})],
)
def test_health_is_public(client: Any, path: str, body: dict[str, bool]) -> None:
    response = client.get(path)
    assert (response.status_code, response.json()) == (200, body)


def test_server_metadata_is_public_and_names_no_library(client: Any) -> None:
    response = client.get("/v2")
    assert response.status_code == 200
    assert response.json()["name"] == "iris-bento"
    assert "bentoml" not in response.text.lower()


@pytest.mark.parametrize("suffix", ["", "/ready"])
def test_model_routes_need_a_key(client: Any, suffix: str) -> None:
    assert_error(client.get(f"/v2/models/iris_clf{suffix}"), 401)
    assert_error(client.post(INFER, json={"inputs": [tensor([IRIS_ROWS[0]])]}), 401)


def test_model_metadata(client: Any, auth: dict[str, str], model_version: str) -> None:
    for path in ("/v2/models/iris_clf", f"/v2/models/iris_clf/versions/{model_version}"):
        metadata = client.get(path, headers=auth).json()
        assert metadata["name"] == "iris_clf"
        assert metadata["versions"] == [model_version]
        assert metadata["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}]
        assert metadata["outputs"] == [
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1]},
        ]
    ready = client.get(f"/v2/models/iris_clf/versions/{model_version}/ready", headers=auth)
    assert ready.json() == {"name": "iris_clf", "ready": True}


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/iris_clf/versions/v0",
        "/v2/models/iris_clf/versions/v0/ready",
        "/v2/models/other",
        "/v2/models/other/ready",
    ],
)
def test_another_model_or_version_is_not_found(
    client: Any, auth: dict[str, str], path: str
) -> None:
    assert_error(client.get(path, headers=auth), 404)


def test_not_found_names_what_was_asked(client: Any, auth: dict[str, str]) -> None:
    details = assert_error(client.get("/v2/models/other", headers=auth), 404)
    assert details.startswith("no model 'other': this server serves 'iris_clf' version")


def test_the_binary_extension_is_refused_by_name(client: Any, auth: dict[str, str]) -> None:
    body = json.dumps({"inputs": [tensor([GOOD])]}).encode()
    headers = {**auth, "inference-header-content-length": str(len(body))}
    details = assert_error(client.post(INFER, content=body + b"\0" * 16, headers=headers), 400)
    assert "binary tensor data extension is not supported" in details


def test_infer_on_another_version_is_not_found(client: Any, auth: dict[str, str]) -> None:
    body = {"inputs": [tensor([IRIS_ROWS[0]])]}
    assert_error(infer(client, auth, body, "/v2/models/iris_clf/versions/v0/infer"), 404)


# --- inference -------------------------------------------------------------------------------


def batch_predict(client: Any, auth: dict[str, str], rows: np.ndarray) -> dict[str, Any]:
    items = [{"features": row} for row in rows.tolist()]
    results = client.post("/batch_predict", json={"items": items}, headers=auth).json()["results"]
    return {
        "probabilities": [list(result["probabilities"].values()) for result in results],
        "labels": [result["label"] for result in results],
    }


def test_answers_equal_batch_predicts_for_all_iris_rows(
    client: Any, auth: dict[str, str], model_version: str
) -> None:
    response = infer(client, auth, {"id": "iris", "inputs": [tensor(IRIS_ROWS)]})
    body = response.json()
    assert (body["id"], body["model_name"], body["model_version"]) == (
        "iris",
        "iris_clf",
        model_version,
    )
    answer = outputs(response)
    native = batch_predict(client, auth, IRIS_ROWS)
    assert answer["probabilities"]["shape"] == [150, 3]
    assert answer["probabilities"]["datatype"] == "FP64"
    assert (
        np.array(answer["probabilities"]["data"]).reshape(150, 3).tolist()
        == native["probabilities"]
    )
    assert answer["labels"] == {
        "name": "labels",
        "datatype": "BYTES",
        "shape": [150],
        "data": native["labels"],
    }


def test_nested_data_and_fp32_are_accepted(client: Any, auth: dict[str, str]) -> None:
    rows = IRIS_ROWS[:3]
    flat = outputs(infer(client, auth, {"inputs": [tensor(rows)]}))
    nested = {**tensor(rows, "FP32"), "data": rows.tolist()}
    assert outputs(infer(client, auth, {"inputs": [nested]})) == flat


def test_outputs_select_the_tensors(client: Any, auth: dict[str, str]) -> None:
    body = {"inputs": [tensor(IRIS_ROWS[:2])], "outputs": [{"name": "labels"}]}
    assert list(outputs(infer(client, auth, body))) == ["labels"]


def test_an_absent_id_is_absent(client: Any, auth: dict[str, str]) -> None:
    assert "id" not in infer(client, auth, {"inputs": [tensor(IRIS_ROWS[:1])]}).json()


GOOD = [5.1, 3.5, 1.4, 0.2]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": [tensor([[5.1, 3.5, 101, 0.2]])]}, "inputs[0].data[2]"),
        (
            {"inputs": [{**tensor([GOOD, GOOD]), "data": [GOOD, [1, 2, -1, 3]]}]},
            "inputs[0].data[1][2]",
        ),
        ({"inputs": [{**tensor([GOOD, GOOD]), "data": [GOOD, GOOD[:2]]}]}, "inputs[0].data[1]"),
        ({"inputs": [{**tensor([GOOD, GOOD]), "data": [GOOD, [*GOOD, 1]]}]}, "inputs[0].data[1]"),
        ({"inputs": [{**tensor([GOOD]), "data": [5.1, True, 1.4, 0.2]}]}, "inputs[0].data[1]"),
        ({"inputs": [{**tensor([GOOD]), "data": [5.1, "x", 1.4, 0.2]}]}, "inputs[0].data[1]"),
        ({"inputs": [tensor([GOOD], "INT32")]}, "inputs[0].datatype"),
        ({"inputs": [{**tensor([GOOD]), "name": "x"}]}, "inputs[0].name"),
        ({"inputs": [tensor([GOOD], shape=[1, 3])]}, "inputs[0].shape"),
        ({"inputs": [tensor([GOOD], shape=[2, 4])]}, "inputs[0].data"),
        ({"inputs": [{**tensor([GOOD]), "extra": 1}]}, "inputs[0].extra"),
        ({"inputs": [tensor([GOOD]), tensor([GOOD])]}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({}, "inputs"),
        ({"inputs": [tensor([GOOD])], "outputs": [{"name": "x"}]}, "outputs[0].name"),
        ({"inputs": [tensor([GOOD])], "id": 7}, "id"),
        ({"inputs": [tensor([GOOD])], "parameters": {"a": [1]}}, "parameters.a"),
        ({"inputs": [tensor([GOOD])], "priority": 1}, "priority"),
    ],
    ids=[
        "out of range",
        "nested out of range",
        "a short row",
        "a long row",
        "a boolean",
        "a string",
        "datatype",
        "input name",
        "not four features",
        "data short of the shape",
        "unknown tensor field",
        "two inputs",
        "no inputs",
        "inputs missing",
        "unknown output",
        "id not a string",
        "parameter value not a scalar",
        "unknown request field",
    ],
)
def test_invalid_requests_name_the_field(
    client: Any, auth: dict[str, str], body: Any, field: str
) -> None:
    details = assert_error(infer(client, auth, body), 400)
    assert field in [detail["field"] for detail in details], details


def test_more_rows_than_the_item_limit_are_refused(client: Any, auth: dict[str, str]) -> None:
    limit = project_settings().limits.max_batch_items
    rows = np.tile(GOOD, (limit + 1, 1))
    details = assert_error(infer(client, auth, {"inputs": [tensor(rows)]}), 400)
    assert details[0]["field"] == "inputs[0].shape"


def test_a_body_without_content_type_is_json(client: Any, auth: dict[str, str]) -> None:
    """V2 clients (tritonclient among them) send none."""
    body = json.dumps({"inputs": [tensor([GOOD])]})
    assert client.post(INFER, content=body, headers=auth).status_code == 200


# --- over HTTP: a real V2 client, and the batcher shared with the native API ------------------


@pytest.fixture(scope="module")
def triton(server: RunningServer) -> Any:
    import tritonclient.http as triton_http

    return triton_http.InferenceServerClient(server.url.removeprefix("http://"))


def test_tritonclient_speaks_to_the_server(triton: Any, server: RunningServer) -> None:
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    auth = {"x-api-key": API_KEYS[0]}
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("iris_clf", headers=auth)
    metadata = triton.get_model_metadata("iris_clf", headers=auth)
    assert metadata["inputs"][0]["name"] == "features"

    rows = IRIS_ROWS.astype(np.float64)
    features = triton_http.InferInput("features", list(rows.shape), "FP64")
    features.set_data_from_numpy(rows, binary_data=False)
    wanted = [
        triton_http.InferRequestedOutput(name, binary_data=False)
        for name in ("probabilities", "labels")
    ]
    result = triton.infer("iris_clf", [features], outputs=wanted, request_id="t1", headers=auth)
    items = [{"features": row} for row in rows.tolist()]
    native = requests.post(
        f"{server.url}/batch_predict", json={"items": items}, headers=auth, timeout=10
    ).json()["results"]
    assert result.as_numpy("probabilities").tolist() == [
        list(item["probabilities"].values()) for item in native
    ]
    assert result.as_numpy("labels").tolist() == [item["label"] for item in native]
    assert result.get_response()["id"] == "t1"

    bad = triton_http.InferInput("features", [1, 4], "FP64")
    bad.set_data_from_numpy(np.array([[5.1, 3.5, 101.0, 0.2]]), binary_data=False)
    with pytest.raises(InferenceServerException) as refused:
        triton.infer("iris_clf", [bad], headers=auth)
    assert refused.value.status() == "400"


def batched_rows(url: str) -> float:
    """Rows through the batcher so far, from the model-call histogram's sum."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("iris_model_batch_rows_sum")
    )


def test_v2_and_native_rows_go_through_the_same_batcher(server: RunningServer) -> None:
    auth = {"x-api-key": API_KEYS[0]}
    before = batched_rows(server.url)

    def send(path: str, body: dict[str, Any]) -> None:
        with requests.Session() as session:
            for _ in range(10):
                answer = session.post(f"{server.url}{path}", json=body, headers=auth, timeout=10)
                assert answer.status_code == 200

    jobs = [(INFER, {"inputs": [tensor([GOOD, GOOD])]}), ("/predict", {"features": GOOD})] * 4
    clients = [threading.Thread(target=send, args=job) for job in jobs]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    # 4 V2 clients x 10 requests x 2 rows, and 4 native clients x 10 rows.
    assert batched_rows(server.url) - before == 4 * 10 * 2 + 4 * 10
