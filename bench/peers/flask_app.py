"""Flask peer: the reference design's stack (Flask, pydantic validation, gunicorn)."""

from collections.abc import Callable
from functools import wraps

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import ValidationError

from bench import payloads
from bench.peers import contract


def require_key(view: Callable[[], ResponseReturnValue]) -> Callable[[], ResponseReturnValue]:
    """Refuse a missing or wrong key before the view runs."""

    @wraps(view)
    def checked() -> ResponseReturnValue:
        if not contract.key_ok(request.headers.get(payloads.KEY_HEADER)):
            return jsonify(contract.error("missing or invalid API key")), 401
        return view()

    return checked


def create_app() -> Flask:
    """The app with its model, loaded once per gunicorn worker."""
    app = Flask(__name__)
    model = contract.Model()

    @app.errorhandler(ValidationError)
    def invalid(exc: ValidationError) -> ResponseReturnValue:
        detail = [{"loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]
        return jsonify(contract.error("invalid input", detail)), 400

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(status="ok", model_version=model.version)

    @app.post("/predict")
    @require_key
    def predict() -> ResponseReturnValue:
        record = contract.Record.model_validate_json(request.get_data())
        return jsonify(model.predict([record])[0])

    @app.post("/batch_predict")
    @require_key
    def batch_predict() -> ResponseReturnValue:
        batch = contract.Batch.model_validate_json(request.get_data())
        return jsonify(results=model.predict(batch.items))

    return app
