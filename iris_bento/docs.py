"""The API's docs: a Swagger UI page at `/` and the OpenAPI document it reads at `/docs.json`.

BentoML's own page loads Google Tag Manager, and its document carries BentoML's title, version
badge and links, no `/health` and no security scheme, so Swagger UI has no "Authorize" button.
These routes take the place of BentoML's: the page uses the Swagger UI files BentoML ships
(under `/static_content`) and loads nothing from elsewhere, which its Content-Security-Policy
holds the browser to; the document is BentoML's, rewritten to describe this project.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from iris_bento import PROJECT_DIR, project_version
from iris_bento.features import FEATURE_NAMES, MODEL_NAME
from iris_bento.schemas import (
    BatchPrediction,
    BatchPredictRequest,
    Health,
    Prediction,
    PredictRequest,
)
from iris_bento.settings import project_settings
from iris_bento.v2 import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
)

# The paths of the docs UI: public when `iris.docs.public` is on.
DOCS_PATHS: Final = frozenset({"/", "/docs.json", "/docs.js"})
STATIC_PREFIX: Final = "/static_content/"

# Swagger UI's online validator would send the document to validator.swagger.io.
_INITIALIZER: Final = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
  });
};
"""

_PAGE: Final = b"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Iris classifier API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./docs.js" charset="UTF-8"></script>
  </body>
</html>
"""

# Only this service: Swagger UI needs inline styles and shows images from data: URLs.
_PAGE_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}

TITLE: Final = "Iris classifier"
DESCRIPTION: Final = """\
Classifies iris flowers into *setosa*, *versicolor* or *virginica* from four measurements in
centimetres, with a scikit-learn pipeline served by BentoML.

The routes with a lock need an API key: press **Authorize** and give it in **ApiKey** (sent as
the `x-api-key` header) or in **Bearer** (sent as `Authorization: Bearer`), one of the two.
Errors answer `{{"error": ..., "code": ..., "details": ...}}`.

Serving the model `{model_tag}`.
"""

REF: Final = "#/components/schemas/{model}"

# Every status a keyed route can answer besides 200, each in the error contract; which routes
# answer which, below.
_ERRORS: Final = {
    "400": "The body is not valid JSON or does not match the schema (`details` says where; for a "
    "V2 tensor, the tensor and the element), or the request sends more than one API key.",
    "401": "No API key, or one that is not valid.",
    "404": "No such model, or no such version of it.",
    "413": "The body is larger than `iris.limits.max_body_bytes`.",
    "415": "The body's Content-Type is not JSON (a V2 body may have none), or it is compressed.",
    "429": "This worker is at its limit of requests in flight; retry after `Retry-After`.",
    "500": "An error in the service; the log has its request id.",
    "503": "The worker is draining, or its queue is full; retry after `Retry-After`.",
    "504": "The model did not answer within `iris.limits.request_timeout_s`.",
}
_NATIVE_STATUSES: Final = ("400", "401", "413", "415", "429", "500", "503", "504")
_V2_INFER_STATUSES: Final = (*_NATIVE_STATUSES, "404")
_V2_MODEL_STATUSES: Final = ("400", "401", "404")
V2_TAG: Final = "Open Inference Protocol"
# The V2 routes' bodies, by the models that validate and serialise them.
_V2_MODELS: Final = (
    (InferenceRequest, "validation"),
    (InferenceResponse, "serialization"),
    (ModelMetadata, "serialization"),
    (ModelReady, "serialization"),
    (ServerMetadata, "serialization"),
)
_ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error", "code", "details"],
    "properties": {
        "error": {"type": "string", "examples": ["invalid input"]},
        "code": {"type": "integer", "examples": [400]},
        "details": {"description": "What went wrong: a message, or a list of problems."},
    },
}
_SECURITY_SCHEMES: Final = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}
# BentoML's two groups of routes, described for this service, and the V2 protocol's.
_TAGS: Final = [
    {"name": "Service APIs", "description": "The model's predictions; an API key is needed."},
    {"name": "Infrastructure", "description": "Probes and metrics, open to all."},
    {"name": V2_TAG, "description": "The Open Inference Protocol (KServe V2)."},
]
# The native routes' bodies, by the models that validate and serialise them.
_NATIVE_BODIES: Final = {
    "/predict": (PredictRequest, Prediction),
    "/batch_predict": (BatchPredictRequest, BatchPrediction),
}
# The request examples "Try it out" starts from: the README's payloads, in examples/.
_EXAMPLES: Final = {"/predict": ("predict", "predict_named"), "/batch_predict": ("batch_predict",)}


def _json_response(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI response with a JSON body: a schema, or the name of one in the components."""
    if isinstance(schema, str):
        schema = {"$ref": REF.format(model=schema)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error_responses(*statuses: str) -> dict[str, Any]:
    return {status: _json_response(_ERRORS[status], "Error") for status in statuses}


def _examples(path: str) -> dict[str, Any]:
    return {
        name: {"value": json.loads((PROJECT_DIR / "examples" / f"{name}.json").read_text())}
        for name in _EXAMPLES[path]
    }


def _schemas() -> dict[str, Any]:
    """Every body's JSON schema, from the pydantic models that validate and serialise them."""
    models = [
        *((model, "validation") for model, _ in _NATIVE_BODIES.values()),
        *((model, "serialization") for _, model in _NATIVE_BODIES.values()),
        (Health, "serialization"),
        *_V2_MODELS,
    ]
    _, top = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    schemas = {**top["$defs"], "Error": _ERROR_SCHEMA}
    # Checked by a validator before the items are, so not in pydantic's schema.
    limit = project_settings().limits.max_batch_items
    schemas["BatchPredictRequest"]["properties"]["items"]["maxItems"] = limit
    _tighten_tensor_schema(schemas, limit)
    return schemas


def _tighten_tensor_schema(schemas: dict[str, Any], max_rows: int) -> None:
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


def _v2_paths(model_version: str) -> dict[str, Any]:
    """The V2 routes; their path parameters name the one model and version served (any other
    is a 404)."""

    def operation(description: str, ok: Any, *statuses: str) -> dict[str, Any]:
        responses = {"200": _json_response(description, ok), **_error_responses(*statuses)}
        return {"tags": [V2_TAG], "description": description, "responses": responses}

    paths: dict[str, Any] = {
        "/v2": {"get": operation("The server's name, version and extensions", "ServerMetadata")},
        "/v2/health/live": {"get": operation("Whether the server is live", _flag("live"))},
        "/v2/health/ready": {
            "get": operation("Whether the server takes inference requests", _flag("ready"), "503")
        },
    }
    name = {"name": "model_name", "in": "path", "required": True, "schema": {"enum": [MODEL_NAME]}}
    version = {**name, "name": "model_version", "schema": {"enum": [model_version]}}
    for prefix, parameters in (
        ("/v2/models/{model_name}", [name]),
        ("/v2/models/{model_name}/versions/{model_version}", [name, version]),
    ):
        metadata = operation(
            "The model's versions, inputs and outputs", "ModelMetadata", *_V2_MODEL_STATUSES
        )
        ready = operation(
            "Whether the model takes inference requests", "ModelReady", *_V2_MODEL_STATUSES, "503"
        )
        infer = operation(
            "Class probabilities and labels of N rows of four features",
            "InferenceResponse",
            *_V2_INFER_STATUSES,
        )
        infer["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model="InferenceRequest")}}
            },
        }
        for method in (metadata, ready, infer):
            method["parameters"] = parameters
        paths[prefix] = {"get": metadata}
        paths[f"{prefix}/ready"] = {"get": ready}
        paths[f"{prefix}/infer"] = {"post": infer}
    return paths


def describe_api(spec: dict[str, Any], model_tag: str, public_paths: frozenset[str]) -> dict:
    """BentoML's OpenAPI document made this project's, in OpenAPI 3.1 (so that pydantic's JSON
    schemas are exact as they are): its title, description and version, the native routes'
    bodies as the service validates and answers them, every error they can answer, `/health`,
    the V2 routes, and the security schemes."""
    # A copy, through JSON: BentoML's status codes are ints until serialised.
    doc = json.loads(json.dumps(spec))
    doc["openapi"] = "3.1.0"
    doc["info"] = {
        "title": TITLE,
        "description": DESCRIPTION.format(model_tag=model_tag),
        "version": project_version(),
    }
    doc["tags"] = _TAGS
    doc["components"] = {"schemas": _schemas(), "securitySchemes": _SECURITY_SCHEMES}
    doc["security"] = [{name: []} for name in _SECURITY_SCHEMES]
    paths = doc["paths"]
    for path, (request, answer) in _NATIVE_BODIES.items():
        operation = paths[path]["post"]
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": REF.format(model=request.__name__)},
                    "examples": _examples(path),
                }
            },
        }
        operation["responses"] = {
            "200": _json_response("The predictions", answer.__name__),
            **_error_responses(*_NATIVE_STATUSES),
        }
    paths["/readyz"]["get"]["responses"]["503"] = {"description": "Not ready, or draining"}
    paths["/health"] = {
        "get": {
            "tags": ["Infrastructure"],
            "description": "The model this service serves; answers once it is loaded.",
            "responses": {"200": _json_response("The service and its model", "Health")},
        }
    }
    paths["/schema.json"] = {
        "get": {
            "tags": ["Infrastructure"],
            "description": "The service's schema, which BentoML's client reads before it calls.",
            "responses": {"200": _json_response("The schema", {"type": "object"})},
        }
    }
    paths.update(_v2_paths(model_tag.partition(":")[2]))
    for path, item in paths.items():
        if path in public_paths:
            for operation in item.values():
                operation["security"] = []
    return doc


def docs_routes(document: Callable[[], bytes]) -> list[Route]:
    """The page, its script and the document; `document()` gives the document's JSON."""

    async def page(_: Request) -> Response:
        return Response(_PAGE, media_type="text/html", headers=_PAGE_HEADERS)

    async def script(_: Request) -> Response:
        return Response(_INITIALIZER, media_type="text/javascript")

    async def openapi(_: Request) -> Response:
        return Response(document(), media_type="application/json")

    return [
        Route("/", page, methods=["GET"]),
        Route("/docs.js", script, methods=["GET"]),
        Route("/docs.json", openapi, methods=["GET"]),
    ]
