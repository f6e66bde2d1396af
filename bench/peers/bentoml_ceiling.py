"""Ceiling: BentoML's request path alone, set up as the project sets it up.

The same runtime configuration as `make serve` (`configuration.yaml`: two workers, BentoML's
metrics and tracing on, its access log off), the same start-up treatment (the fix of BentoML's
timeout middleware, a frozen heap), and `@bentoml.api` methods that return the bare ASGI
ceiling's fixed answer: none of the project's middlewares, no validation of the features, no
model. What any `@bentoml.api` service pays per request on this machine before doing anything.
"""

import gc
from typing import Any

import bentoml
from iris_bento.bentoml_fixes import fix_timeout_middleware
from starlette.responses import Response

from bench.peers.bare_asgi import BODY


def fixed_answer() -> Response:
    return Response(BODY, media_type="application/json")


# Named as the project's service, so that configuration.yaml configures it the same way.
@bentoml.service(name="IrisClassifier")
class BentoMLCeiling:
    def __init__(self) -> None:
        fix_timeout_middleware()
        gc.collect()
        gc.freeze()

    # Annotated as plain JSON for BentoML's schema; the Response goes out as it is.
    @bentoml.api
    async def predict(self, id: str | None = None, features: Any = None) -> dict:
        return fixed_answer()  # type: ignore[return-value]

    @bentoml.api
    async def batch_predict(self, items: list[Any]) -> dict:
        return fixed_answer()  # type: ignore[return-value]
