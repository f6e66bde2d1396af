"""The Open Inference Protocol (KServe V2 REST) beside the native API.

What KServe, Triton, MLServer and Seldon Core speak, so that their clients, load testers and
gateways call this service unchanged. The routes run behind the same middlewares as `/predict`
(request id, limits, auth, the error contract) and their rows go through the same batcher, so V2
and native requests share model calls. Validation is the native API's: finite numbers from 0 to
100 cm, no field the protocol does not define, and errors that name the tensor and the element.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, Protocol

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    WithJsonSchema,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from iris_bento import project_version
from iris_bento.batching import MicroBatcher
from iris_bento.errors import InvalidInput, NotFound, renders_api_errors
from iris_bento.features import FEATURE_NAMES, MODEL_NAME
from iris_bento.schemas import FeatureList, Measurement, RequestId, field_path
from iris_bento.settings import project_settings

SERVER_NAME: Final = "iris-bento"
INPUT_NAME: Final = "features"
PROBABILITIES: Final = "probabilities"
LABELS: Final = "labels"


def _scalar(value: Any) -> Any:
    if not isinstance(value, str | int | float):  # a bool is an int
        raise ValueError("expected a string, a number or a boolean")
    return value


# The protocol's parameter values: one error when a value is none of the three, not one a type.
ParameterValue = Annotated[
    Any, AfterValidator(_scalar), WithJsonSchema({"type": ["string", "number", "boolean"]})
]
Parameters = dict[str, ParameterValue]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _layout(value: Any) -> str | None:
    """Validate against the layout the client sent, so errors name one layout, not both."""
    if isinstance(value, list):
        return "nested" if value and isinstance(value[0], list) else "flat"
    return None


TensorData = Annotated[
    Annotated[list[Measurement], Tag("flat")] | Annotated[list[FeatureList], Tag("nested")],
    Discriminator(
        _layout,
        custom_error_type="tensor_data",
        custom_error_message="expected the elements as a flat list, or nested in row-major order",
    ),
]


class RequestInput(_Strict):
    """The one input tensor: rows of four measurements, in the model's feature order."""

    name: Literal["features"]
    shape: list[StrictInt] = Field(min_length=2, max_length=2, examples=[[1, 4]])
    datatype: Literal["FP32", "FP64"]
    parameters: Parameters | None = None
    data: TensorData = Field(examples=[[5.1, 3.5, 1.4, 0.2]])


class RequestOutput(_Strict):
    name: Literal["probabilities", "labels"]
    parameters: Parameters | None = None


class InferenceRequest(_Strict):
    """An inference request of the Open Inference Protocol."""

    id: RequestId | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | list[str]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServedModel(Protocol):
    """What the routes need of the service: its model's version and classes, and its batcher."""

    model_version: str
    classes: tuple[str, ...]
    batcher: MicroBatcher


def model_metadata(model: ServedModel) -> ModelMetadata:
    return ModelMetadata(
        name=MODEL_NAME,
        versions=[model.model_version],
        platform="sklearn_joblib",
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="FP64", shape=[-1, len(FEATURE_NAMES)])],
        outputs=[
            TensorMetadata(name=PROBABILITIES, datatype="FP64", shape=[-1, len(model.classes)]),
            TensorMetadata(name=LABELS, datatype="BYTES", shape=[-1]),
        ],
    )


def parse_rows(body: bytes) -> tuple[InferenceRequest, np.ndarray]:
    """The request and its rows, or a 400 naming the field, the tensor and the element."""
    try:
        request = InferenceRequest.model_validate_json(body)
    except ValidationError as error:
        raise InvalidInput(
            [
                {"field": field_path(problem["loc"]), "message": problem["msg"]}
                for problem in error.errors(include_url=False)
            ]
        ) from None
    tensor = request.inputs[0]
    rows, width = tensor.shape
    limit = project_settings().limits.max_batch_items
    if not 1 <= rows <= limit or width != len(FEATURE_NAMES):
        raise InvalidInput(
            [
                {
                    "field": "inputs[0].shape",
                    "message": f"expected [N, {len(FEATURE_NAMES)}] with N from 1 to {limit}",
                }
            ]
        )
    data = np.asarray(tensor.data, dtype=np.float64)
    expected = (rows * width,) if data.ndim == 1 else (rows, width)
    if data.shape != expected:
        raise InvalidInput(
            [
                {
                    "field": "inputs[0].data",
                    "message": f"{data.size} elements in layout {list(data.shape)} do not fill "
                    f"the shape {tensor.shape}",
                }
            ]
        )
    return request, data.reshape(rows, width)


def inference_response(
    request: InferenceRequest, model: ServedModel, probabilities: np.ndarray
) -> InferenceResponse:
    wanted = [output.name for output in request.outputs or ()] or [PROBABILITIES, LABELS]
    rows = len(probabilities)
    tensors = {
        PROBABILITIES: ResponseOutput(
            name=PROBABILITIES,
            datatype="FP64",
            shape=list(probabilities.shape),
            data=probabilities.ravel().tolist(),
        ),
        LABELS: ResponseOutput(
            name=LABELS,
            datatype="BYTES",
            shape=[rows],
            data=[model.classes[index] for index in probabilities.argmax(axis=1).tolist()],
        ),
    }
    return InferenceResponse(
        model_name=MODEL_NAME,
        model_version=model.model_version,
        id=request.id,
        outputs=[tensors[name] for name in dict.fromkeys(wanted)],
    )


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(
        model.model_dump_json(exclude_none=True), status_code=status, media_type="application/json"
    )


def v2_routes(
    current_model: Callable[[], ServedModel], is_ready: Callable[[], bool]
) -> list[Route]:
    """The protocol's routes; `current_model()` is the worker's service, `is_ready()` whether it
    takes traffic (not while draining)."""

    def _model(request: Request) -> ServedModel:
        """The served model, if the path names it (and, when it names one, its version)."""
        model = current_model()
        name = request.path_params["name"]
        version = request.path_params.get("version", model.model_version)
        if name != MODEL_NAME or version != model.model_version:
            raise NotFound(
                f"no model {name!r} version {version!r}: this server serves {MODEL_NAME!r} "
                f"version {model.model_version!r}"
            )
        return model

    async def server_metadata(_: Request) -> Response:
        return _json(ServerMetadata(name=SERVER_NAME, version=project_version(), extensions=[]))

    async def live(_: Request) -> Response:
        return Response(b'{"live":true}', media_type="application/json")

    async def ready(_: Request) -> Response:
        ready = is_ready()
        body = b'{"ready":true}' if ready else b'{"ready":false}'
        return Response(body, status_code=200 if ready else 503, media_type="application/json")

    @renders_api_errors
    async def metadata(request: Request) -> Response:
        return _json(model_metadata(_model(request)))

    @renders_api_errors
    async def model_ready(request: Request) -> Response:
        _model(request)
        ready = is_ready()
        return _json(ModelReady(name=MODEL_NAME, ready=ready), 200 if ready else 503)

    @renders_api_errors
    async def infer(request: Request) -> Response:
        model = _model(request)
        inference, rows = parse_rows(await request.body())
        probabilities = await model.batcher.infer(rows)
        return _json(inference_response(inference, model, probabilities))

    routes = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, metadata, methods=["GET"]),
            Route(f"{prefix}/ready", model_ready, methods=["GET"]),
            Route(f"{prefix}/infer", infer, methods=["POST"]),
        ]
    return routes


V2_TAG: Final = "Open Inference Protocol"
# The bodies the V2 routes validate and answer, for the OpenAPI document.
V2_MODELS: Final = [
    (InferenceRequest, "validation"),
    (InferenceResponse, "serialization"),
    (ModelMetadata, "serialization"),
    (ModelReady, "serialization"),
    (ServerMetadata, "serialization"),
]
_MODEL_ERRORS: Final = {
    "401": "No API key, or one that is not valid.",
    "404": "No such model, or no such version of it.",
}
_INFER_ERRORS: Final = {
    "400": "The body does not match the schema, or its data do not fill its shape; `details` "
    "names the tensor and the element.",
    **_MODEL_ERRORS,
    "413": "The body is larger than `iris.limits.max_body_bytes`.",
    "415": "A body sent with a Content-Type other than `application/json`.",
    "429": "This worker is at its limit of requests in flight; retry after `Retry-After`.",
    "500": "An error in the service; the log has its request id.",
    "503": "The worker is draining or its queue is full; retry after `Retry-After`.",
    "504": "The model did not answer in time.",
}


def tighten_tensor_schema(schemas: dict[str, Any], max_rows: int) -> None:
    """The input tensor's JSON schema as close to what is accepted as JSON Schema can say: a
    shape of [N, 4] with N from 1 to `max_rows`, and as many elements, flat or in rows of four.
    That N rows fill the shape is checked by the service only (JSON Schema cannot relate two
    fields' values)."""
    width = len(FEATURE_NAMES)
    tensor = schemas["RequestInput"]["properties"]
    tensor["shape"] = {
        "type": "array",
        "prefixItems": [
            {"type": "integer", "minimum": 1, "maximum": max_rows},
            {"const": width},
        ],
        "items": False,
        "minItems": 2,
        "examples": [[1, width]],
    }
    flat, nested = tensor["data"]["oneOf"]
    flat.update(minItems=width, maxItems=width * max_rows)
    nested.update(minItems=1, maxItems=max_rows)


def _flag(name: str) -> dict[str, Any]:
    """`{"live": true}` and the like."""
    return {"type": "object", "required": [name], "properties": {name: {"type": "boolean"}}}


def v2_paths(
    model_version: str,
    json_response: Callable[[str, Any], dict[str, Any]],
    error_responses: Callable[[dict[str, str]], dict[str, Any]],
) -> dict[str, Any]:
    """The V2 routes in an OpenAPI document, in the document's own response shapes; the path
    parameters name the one model and version served (others are 404)."""

    def operation(description: str, ok: Any, errors: dict[str, str], **more: Any) -> dict:
        responses = {"200": json_response(description, ok), **error_responses(errors), **more}
        return {"tags": [V2_TAG], "description": description, "responses": responses}

    not_ready = {"503": json_response("Not ready, or draining", _flag("ready"))}
    paths: dict[str, Any] = {
        "/v2": {
            "get": operation("The server's name, version and extensions", "ServerMetadata", {})
        },
        "/v2/health/live": {"get": operation("Whether the server is live", _flag("live"), {})},
        "/v2/health/ready": {
            "get": operation(
                "Whether the server takes inference requests", _flag("ready"), {}, **not_ready
            )
        },
    }
    name = {"name": "model_name", "in": "path", "required": True, "schema": {"enum": [MODEL_NAME]}}
    version = {**name, "name": "model_version", "schema": {"enum": [model_version]}}
    for prefix, parameters in (
        ("/v2/models/{model_name}", [name]),
        ("/v2/models/{model_name}/versions/{model_version}", [name, version]),
    ):
        metadata = operation(
            "The model's versions, inputs and outputs", "ModelMetadata", _MODEL_ERRORS
        )
        ready = operation(
            "Whether the model takes inference requests", "ModelReady", _MODEL_ERRORS, **not_ready
        )
        infer = operation(
            "Class probabilities and labels of N rows of four features",
            "InferenceResponse",
            _INFER_ERRORS,
        )
        infer["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
            },
        }
        for method in (metadata, ready, infer):
            method["parameters"] = parameters
        paths[prefix] = {"get": metadata}
        paths[f"{prefix}/ready"] = {"get": ready}
        paths[f"{prefix}/infer"] = {"post": infer}
    return paths
