"""Builds the service's ASGI app as a worker does, under the configuration in the environment,
sends one request to each API route, and prints as JSON the names of the spans made (recorded,
whether or not sampled) and of those exported, seen by two processors added to BentoML's tracer
provider. Run by tests/test_tracing.py in a fresh process, since
the tracing configuration is read once per process."""

from __future__ import annotations

import json

from bentoml._internal.configuration.containers import BentoMLContainer
from opentelemetry.sdk.trace import Span, SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from service import IrisClassifier


class SpansMade(SpanProcessor):
    """Every span started, sampled or not: BentoML records spans it never exports."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def on_start(self, span: Span, parent_context: object = None) -> None:
        self.names.add(span.name)


made, exporter = SpansMade(), InMemorySpanExporter()
with TestClient(IrisClassifier.to_asgi()) as client:
    provider = BentoMLContainer.tracer_provider.get()
    provider.add_span_processor(made)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    key = {"x-api-key": "probe-key"}
    features = [5.1, 3.5, 1.4, 0.2]
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json={"features": features}, headers=key).status_code == 200
    batch = {"items": [{"features": features}]}
    assert client.post("/batch_predict", json=batch, headers=key).status_code == 200
exported = {span.name for span in exporter.get_finished_spans()}
print(json.dumps({"made": sorted(made.names), "exported": sorted(exported)}))
