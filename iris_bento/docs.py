"""The API's docs: a Swagger UI page at `/` and the OpenAPI document it reads at `/docs.json`.

BentoML's own page loads Google Tag Manager, and its document carries BentoML's title, version
badge and links, no `/health` and no security scheme, so Swagger UI has no "Authorize" button.
These routes take the place of BentoML's: the page uses the Swagger UI files BentoML ships
(under `/static_content`) and loads nothing from elsewhere, which its Content-Security-Policy
holds the browser to; the document is BentoML's, rewritten to describe this project.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from iris_bento.schemas import Health

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

# What the API routes can answer besides 200, each in the error contract.
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
        "error": {"type": "string", "example": "invalid input"},
        "code": {"type": "integer", "example": 400},
        "details": {"description": "What went wrong: a message, or a list of problems."},
    },
}


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_ERROR_RESPONSES: Final = {
    status: _json_response(text, "Error") for status, text in _API_ERRORS.items()
}
_SECURITY_SCHEMES: Final = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}
# BentoML's two groups of routes, described for this service.
_TAG_DESCRIPTIONS: Final = {
    "Service APIs": "The model's predictions; an API key is needed.",
    "Infrastructure": "Probes and metrics, open to all.",
}
# BentoML's schemas for errors this service never answers with, and for task endpoints it has not.
_UNUSED_SCHEMAS: Final = (
    "InvalidArgument",
    "NotFound",
    "InternalServerError",
    "TaskStatusResponse",
)


# The project's folder, or the Bento's copy of it: pyproject.toml and examples/ come along.
_PROJECT: Final = Path(__file__).resolve().parents[1]
# The request examples "Try it out" starts from: the README's payloads, in examples/.
_EXAMPLES: Final = {"/predict": ("predict", "predict_named"), "/batch_predict": ("batch_predict",)}


@cache
def project_version() -> str:
    """The project's version, from pyproject.toml."""
    return tomllib.loads((_PROJECT / "pyproject.toml").read_text())["project"]["version"]


def _examples(path: str) -> dict[str, Any]:
    return {
        name: {"value": json.loads((_PROJECT / "examples" / f"{name}.json").read_text())}
        for name in _EXAMPLES.get(path, ())
    }


def describe_api(spec: dict[str, Any], model_tag: str, public_paths: frozenset[str]) -> dict:
    """BentoML's OpenAPI document made this project's: its title, description and version, the
    `/health` route, the security schemes, and the error contract on every API route."""
    # A copy, through JSON: BentoML's status codes are ints until serialised.
    doc = json.loads(json.dumps(spec))
    doc["info"] = {
        "title": TITLE,
        "description": DESCRIPTION.format(model_tag=model_tag),
        "version": project_version(),
    }
    doc["tags"] = [
        {**tag, "description": _TAG_DESCRIPTIONS.get(tag["name"], "")} for tag in doc["tags"]
    ]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in _UNUSED_SCHEMAS:
        schemas.pop(name, None)
    schemas["Error"] = _ERROR_SCHEMA
    schemas["Health"] = Health.model_json_schema(ref_template="#/components/schemas/{model}")
    doc["components"]["securitySchemes"] = _SECURITY_SCHEMES
    doc["security"] = [{name: []} for name in _SECURITY_SCHEMES]
    doc["paths"]["/health"] = {
        "get": {
            "tags": ["Infrastructure"],
            "description": "The model this service serves; answers once it is loaded.",
            "responses": {"200": _json_response("The service and its model", "Health")},
        }
    }
    for path, item in doc["paths"].items():
        for operation in item.values():
            if path in public_paths:
                operation["security"] = []
            if body := operation.get("requestBody"):
                body["required"] = True
                body["content"]["application/json"]["examples"] = _examples(path)
                ok = {**operation["responses"]["200"], "description": "The predictions"}
                operation["responses"] = {"200": ok, **_ERROR_RESPONSES}
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
