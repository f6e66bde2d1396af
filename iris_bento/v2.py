"""The Open Inference Protocol (KServe V2 REST) beside the native API.

What KServe, Triton, MLServer and Seldon Core speak, so that their clients, load testers and
gateways call this service unchanged. The routes run behind the same middlewares as `/predict`
(request id, limits, auth, the error contract) and their rows go through the same batcher, so V2
and native requests share model calls. Validation is the native API's: finite numbers from 0 to
100 cm, no field the protocol does not define, and errors that name the tensor and the element.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    WithJsonSchema,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from iris_bento import project_version
from iris_bento.endpoints import ServedModel, invalid
from iris_bento.errors import InvalidInput, NotFound, NotReady, renders_api_errors
from iris_bento.features import FEATURE_NAMES, MODEL_NAME
from iris_bento.quotas import charge_rows
from iris_bento.schemas import RequestId, TensorData
from iris_bento.settings import project_settings

SERVER_NAME: Final = "iris-bento"
INPUT_NAME: Final = "features"
PROBABILITIES: Final = "probabilities"
LABELS: Final = "labels"
# Triton's binary tensor data extension: the JSON's length, binary tensors after it.
BINARY_HEADER: Final = "inference-header-content-length"


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
        raise invalid(error) from None
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


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


def v2_routes(
    current_model: Callable[[], ServedModel], is_ready: Callable[[], bool]
) -> list[Route]:
    """The protocol's routes; `current_model()` is the worker's service, `is_ready()` whether it
    takes traffic (not while draining)."""

    def _model(request: Request) -> ServedModel:
        """The served model, if the path names it (and, when it names one, its version)."""
        model = current_model()
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != MODEL_NAME or version not in (None, model.model_version):
            asked = repr(name) if version is None else f"{name!r} version {version!r}"
            raise NotFound(
                f"no model {asked}: this server serves {MODEL_NAME!r} version "
                f"{model.model_version!r}"
            )
        return model

    async def server_metadata(_: Request) -> Response:
        return _json(ServerMetadata(name=SERVER_NAME, version=project_version(), extensions=[]))

    async def live(_: Request) -> Response:
        return Response(b'{"live":true}', media_type="application/json")

    def _require_ready() -> None:
        """Not ready while draining: 503 in the error contract, as /readyz answers."""
        if not is_ready():
            raise NotReady("not ready: this worker is draining")

    @renders_api_errors
    async def ready(_: Request) -> Response:
        _require_ready()
        return Response(b'{"ready":true}', media_type="application/json")

    @renders_api_errors
    async def metadata(request: Request) -> Response:
        return _json(model_metadata(_model(request)))

    @renders_api_errors
    async def model_ready(request: Request) -> Response:
        _model(request)
        _require_ready()
        return _json(ModelReady(name=MODEL_NAME, ready=True))

    @renders_api_errors
    async def infer(request: Request) -> Response:
        model = _model(request)
        if BINARY_HEADER in request.headers:
            raise InvalidInput(
                "the binary tensor data extension is not supported: send the tensors as JSON "
                "(binary_data=False in tritonclient)"
            )
        inference, rows = parse_rows(await request.body())
        await charge_rows(request, len(rows))
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
