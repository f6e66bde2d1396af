"""FastAPI peer: what the deployment guides teach (async handlers, pydantic bodies, uvicorn)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from bench import payloads
from bench.peers import contract

state: dict[str, contract.Model] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Load the model once per worker, at startup."""
    state["model"] = contract.Model()
    yield


app = FastAPI(lifespan=lifespan)
api_key = APIKeyHeader(name=payloads.KEY_HEADER, auto_error=False)


async def require_key(key: Annotated[str | None, Depends(api_key)]) -> None:
    """Refuse a missing or wrong key (async: a plain `def` would run in the thread pool)."""
    if not contract.key_ok(key):
        raise HTTPException(status_code=401, detail="missing or invalid API key")


@app.exception_handler(RequestValidationError)
async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """The contract answers bad input with 400, not FastAPI's 422."""
    detail = [{"loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse(contract.error("invalid input", detail), status_code=400)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok", "model_version": state["model"].version}


@app.post("/predict", dependencies=[Depends(require_key)])
async def predict(record: contract.Record) -> dict[str, object]:
    return state["model"].predict([record])[0]


@app.post("/batch_predict", dependencies=[Depends(require_key)])
async def batch_predict(batch: contract.Batch) -> dict[str, object]:
    return {"results": state["model"].predict(batch.items)}
