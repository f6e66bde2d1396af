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
from iris_bento.schemas import (
    BatchPrediction,
    BatchPredictRequest,
    Health,
    Prediction,
    PredictRequest,
)
from iris_bento.settings import project_settings
from iris_bento.v2 import V2_MODELS, V2_TAG, tighten_tensor_schema, v2_paths

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

Every route but the probes and `/metrics` needs an API key: press **Authorize** and give it in
**ApiKey** (sent as the `x-api-key` header) or in **Bearer** (sent as `Authorization: Bearer`),
one of the two. Errors answer `{{"error": ..., "code": ..., "details": ...}}`.

Serving the model `{model_tag}`.
"""

REF: Final = "#/components/schemas/{model}"

# What the native API routes can answer besides 200, each in the error contract.
_API_ERRORS: Final = {
    "400": "The body is not valid JSON, or does not match the schema; `details` says where.",
    "401": "No API key, or one that is not valid.",
    "413": "The body is larger than `iris.limits.max_body_bytes`.",
    "415": "The body is not `application/json`.",
    "429": "This worker is at its limit of requests in flight; retry after `Retry-After`.",
    "500": "An error in the service; the log has its request id.",
    "503": "The worker is draining or its queue is full; retry after `Retry-After`.",
    "504": "The model did not answer within `iris.limits.request_timeout_s`.",
}
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


def json_response(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI response with a JSON body: a schema, or the name of one in the components."""
    if isinstance(schema, str):
        schema = {"$ref": REF.format(model=schema)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_responses(statuses: dict[str, str]) -> dict[str, Any]:
    return {status: json_response(text, "Error") for status, text in statuses.items()}


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
        *V2_MODELS,
    ]
    _, top = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    schemas = {**top["$defs"], "Error": _ERROR_SCHEMA}
    # Checked by a validator before the items are, so not in pydantic's schema.
    limit = project_settings().limits.max_batch_items
    schemas["BatchPredictRequest"]["properties"]["items"]["maxItems"] = limit
    tighten_tensor_schema(schemas, limit)
    return schemas


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
            "200": json_response("The predictions", answer.__name__),
            **error_responses(_API_ERRORS),
        }
    paths["/readyz"]["get"]["responses"]["503"] = {"description": "Not ready, or draining"}
    paths["/health"] = {
        "get": {
            "tags": ["Infrastructure"],
            "description": "The model this service serves; answers once it is loaded.",
            "responses": {"200": json_response("The service and its model", "Health")},
        }
    }
    paths["/schema.json"] = {
        "get": {
            "tags": ["Infrastructure"],
            "description": "The service's schema, which BentoML's client reads before it calls.",
            "responses": {"200": json_response("The schema", {"type": "object"})},
        }
    }
    paths.update(v2_paths(model_tag.partition(":")[2], json_response, error_responses))
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
