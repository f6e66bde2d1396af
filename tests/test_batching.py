"""MicroBatcher alone: coalescing, order, bounds, overload, deadlines and failures."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest

from iris_bento.batching import MicroBatcher
from iris_bento.errors import Overloaded, TimedOut, title_for
from iris_bento.settings import BatchingSettings


class SlowModel:
    """Doubles its input after a pause, and records the size of every call."""

    def __init__(self, pause_s: float = 0.02) -> None:
        self.pause_s = pause_s
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls.append(len(rows))
        time.sleep(self.pause_s)
        return rows * 2


def run_concurrently(batcher: MicroBatcher, inputs: list[np.ndarray]) -> list[Any]:
    async def scenario() -> list[Any]:
        try:
            return await asyncio.gather(
                *(batcher.infer(rows) for rows in inputs), return_exceptions=True
            )
        finally:
            batcher.close()

    return asyncio.run(scenario())


def rows_of(count: int, width: int = 4) -> list[np.ndarray]:
    return [np.full((1, width), float(i)) for i in range(count)]


@pytest.mark.parametrize("run_in_thread", [False, True])
def test_concurrent_requests_share_model_calls_and_get_their_own_rows(run_in_thread: bool) -> None:
    model = SlowModel()
    inputs = rows_of(64)
    settings = BatchingSettings(run_in_thread=run_in_thread)
    results = run_concurrently(MicroBatcher(model, settings), inputs)
    for rows, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result, rows * 2)
    assert sum(model.calls) == 64
    assert len(model.calls) < 64
    assert max(model.calls) > 1


def test_batches_respect_max_rows_and_never_split_a_request() -> None:
    model = SlowModel()
    inputs = [*rows_of(30), np.ones((20, 4))]
    results = run_concurrently(MicroBatcher(model, BatchingSettings(max_batch_rows=8)), inputs)
    np.testing.assert_array_equal(results[-1], np.full((20, 4), 2.0))
    assert 20 in model.calls
    assert all(size <= 8 for size in model.calls if size != 20)


def test_a_full_queue_answers_overloaded_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    settings = BatchingSettings(max_queue_rows=4)
    with caplog.at_level(logging.WARNING, logger="iris_bento.batching"):
        results = run_concurrently(MicroBatcher(SlowModel(), settings), rows_of(10))
    overloads = sum(isinstance(result, Overloaded) for result in results)
    assert overloads > 1
    assert any(isinstance(result, np.ndarray) for result in results)
    # A flood of 503s is one line (rate limited), not one line each.
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert caplog.records[0].queued_rows >= 1


def test_a_late_model_answers_timed_out_and_the_batcher_recovers() -> None:
    """A deadline can interrupt the wait only while the call runs off the event loop."""
    model = SlowModel(pause_s=0.3)
    batcher = MicroBatcher(model, BatchingSettings(timeout_s=0.05, run_in_thread=True))

    async def scenario() -> tuple[Any, Any]:
        try:
            late = await asyncio.gather(batcher.infer(np.ones((1, 4))), return_exceptions=True)
            model.pause_s = 0.0
            await asyncio.sleep(0.3)
            return late[0], await batcher.infer(np.ones((1, 4)))
        finally:
            batcher.close()

    late, recovered = asyncio.run(scenario())
    assert isinstance(late, TimedOut)
    np.testing.assert_array_equal(recovered, np.full((1, 4), 2.0))


def test_a_model_failure_reaches_every_caller_of_the_batch_only() -> None:
    calls = 0

    def flaky(rows: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.02)
            raise ValueError("model failed")
        return rows

    batcher = MicroBatcher(flaky, BatchingSettings())

    async def scenario() -> tuple[list[Any], Any]:
        try:
            first = await asyncio.gather(
                *(batcher.infer(r) for r in rows_of(3)), return_exceptions=True
            )
            return first, await batcher.infer(np.ones((1, 4)))
        finally:
            batcher.close()

    first, after = asyncio.run(scenario())
    assert isinstance(first[0], ValueError)
    np.testing.assert_array_equal(after, np.ones((1, 4)))


@pytest.mark.parametrize("run_in_thread", [False, True])
def test_a_batch_that_cannot_be_assembled_fails_every_caller_at_once(run_in_thread: bool) -> None:
    model = SlowModel(pause_s=0.0)
    settings = BatchingSettings(run_in_thread=run_in_thread, timeout_s=5)
    started = time.monotonic()
    # Rows of different widths cannot be stacked into one model input. Inline, the first request
    # finds nobody queued and is computed at once; the two after it share a batch.
    inputs = [np.ones((1, 4)), np.ones((1, 4)), np.ones((1, 3))]
    results = run_concurrently(MicroBatcher(model, settings), inputs)
    batched = results if run_in_thread else results[1:]
    assert all(isinstance(result, ValueError) for result in batched), results
    assert time.monotonic() - started < 1, "a caller waited for its deadline"
    assert model.calls == ([] if run_in_thread else [1])


def test_a_request_with_nobody_to_batch_with_is_computed_at_once() -> None:
    """No queue, no yield to the event loop: the other task has not run when the answer is
    back. The requests that reach the batcher in the same pass share one call after it."""
    model = SlowModel(pause_s=0.0)
    batcher = MicroBatcher(model, BatchingSettings())

    async def scenario() -> bool:
        try:
            other = asyncio.ensure_future(asyncio.sleep(0))
            await batcher.infer(np.ones((1, 4)))
            computed_before_any_yield = not other.done()
            await asyncio.gather(*(batcher.infer(rows) for rows in rows_of(10)))
            return computed_before_any_yield
        finally:
            batcher.close()

    assert asyncio.run(scenario())
    assert model.calls == [1, 1, 9]


def test_callers_that_timed_out_are_not_computed() -> None:
    model = SlowModel(pause_s=0.2)
    batcher = MicroBatcher(model, BatchingSettings(timeout_s=0.1, run_in_thread=True))

    async def scenario() -> list[Any]:
        try:
            first = asyncio.ensure_future(batcher.infer(np.ones((1, 4))))
            await asyncio.sleep(0.01)
            queued = [asyncio.ensure_future(batcher.infer(np.ones((2, 4)))) for _ in range(3)]
            return await asyncio.gather(first, *queued, return_exceptions=True)
        finally:
            await asyncio.sleep(0.3)
            batcher.close()

    results = asyncio.run(scenario())
    assert all(isinstance(result, TimedOut) for result in results)
    assert model.calls == [1]


def test_disabled_batching_calls_the_model_once_per_request() -> None:
    model = SlowModel(pause_s=0.0)
    run_concurrently(MicroBatcher(model, BatchingSettings(enabled=False)), rows_of(10))
    assert model.calls == [1] * 10


@pytest.mark.parametrize("max_wait_ms", [0.0, 20.0])
def test_waiting_for_fuller_batches_is_optional(max_wait_ms: float) -> None:
    model = SlowModel(pause_s=0.0)

    async def scenario(batcher: MicroBatcher) -> None:
        try:
            first = asyncio.ensure_future(batcher.infer(np.ones((1, 4))))
            await asyncio.sleep(0.005)
            second = asyncio.ensure_future(batcher.infer(np.ones((1, 4))))
            await asyncio.gather(first, second)
        finally:
            batcher.close()

    asyncio.run(scenario(MicroBatcher(model, BatchingSettings(max_wait_ms=max_wait_ms))))
    assert model.calls == ([1, 1] if max_wait_ms == 0 else [2])


@pytest.mark.parametrize(("error", "status"), [(Overloaded("full"), 503), (TimedOut("late"), 504)])
def test_the_service_renders_batcher_errors_in_the_contract(error: Exception, status: int) -> None:
    from service import renders_api_errors

    @renders_api_errors
    async def failing() -> None:
        raise error

    response = asyncio.run(failing())
    assert response.status_code == status
    assert json.loads(response.body) == {
        "error": title_for(status),
        "code": status,
        "details": str(error),
    }
