"""In-process adaptive batching: concurrent requests of one worker share a single model call.

BentoML's own batching runs the model behind `bentoml.depends` in another process, so every
request pays an IPC hop with pickled payloads; for a model that costs well under a millisecond that
hop costs more than batching saves. Here the queue lives in the worker's event loop: a request
appends its rows and yields once, so that every request of the same event-loop pass joins; the
first to resume takes everything queued (up to `max_batch_rows` rows a call), runs the model
(inline, or in a worker thread when `run_in_thread` is set) and resolves the others' futures,
which they find done when they resume in that same pass. There is no dispatcher task and no
extra pass: a batched request answers one loop pass later than an unbatched one. Batches grow
exactly as fast as load does: one row when idle, many under load. `max_wait_ms` turns the single
yield into a wait for fuller batches.

A request that finds nobody to batch with does not pay for the queue: when nothing is queued and
no other request has reached the batcher in the same event-loop pass, its rows are computed at
once, with no future, no yield and no deadline. It marks the pass, so the requests that follow
it in that pass queue up and share one call. At one connection every request takes this path;
under load, one request a pass does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from iris_bento.errors import Overloaded, TimedOut
from iris_bento.inference import PredictProba
from iris_bento.logs import RateLimitedWarning
from iris_bento.settings import BatchingSettings


class BatchObserver(Protocol):
    """What the batcher reports (`iris_bento.metrics.ModelMetrics` records it)."""

    def model_called(self, rows: np.ndarray, output: np.ndarray, seconds: float) -> None: ...

    def queue_changed(self, queued_rows: int) -> None: ...


class _Pending:
    """One request's rows and the future that receives its slice of the model's output."""

    __slots__ = ("future", "rows")

    def __init__(self, rows: np.ndarray, future: asyncio.Future[np.ndarray]) -> None:
        self.rows = rows
        self.future = future


class MicroBatcher:
    """Coalesces concurrent `infer` calls into few model calls; never splits one request."""

    def __init__(
        self,
        infer: PredictProba,
        settings: BatchingSettings,
        observer: BatchObserver | None = None,
    ) -> None:
        self._infer = infer
        self._observer = observer
        self._settings = settings
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._draining = False
        # True from a request computed at once until the end of that event-loop pass.
        self._pass_taken = False
        # Computing at once needs the call inline, and no wait asked for fuller batches.
        self._may_compute_at_once = not settings.run_in_thread and settings.max_wait_ms == 0
        # One thread, used only with `run_in_thread`: model calls stay serialised.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._overloads = RateLimitedWarning(
            logging.getLogger("iris_bento.batching"), "batching queue full: answering 503"
        )

    async def infer(self, rows: np.ndarray) -> np.ndarray:
        """The model's output for `rows`, computed together with whatever else is queued."""
        if not self._settings.enabled:
            return self._observed_call(rows)
        if self._may_compute_at_once and not (self._queue or self._draining or self._pass_taken):
            self._pass_taken = True
            asyncio.get_running_loop().call_soon(self._end_pass)
            return self._observed_call(rows)
        if self._queued_rows + len(rows) > self._settings.max_queue_rows:
            self._overloads.warn(
                queued_rows=self._queued_rows, max_queue_rows=self._settings.max_queue_rows
            )
            raise Overloaded(
                f"the batching queue holds {self._queued_rows} rows; retry in a moment"
            )
        pending = _Pending(rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_rows += len(rows)
        if self._observer:
            self._observer.queue_changed(self._queued_rows)
        if self._may_compute_at_once:
            # Inline model calls end within the event-loop pass that starts them: no deadline.
            return await self._queued(pending)
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                return await self._queued(pending)
        except TimeoutError:
            raise TimedOut(
                f"the model did not answer within {self._settings.timeout_s:g} s"
            ) from None

    async def _queued(self, pending: _Pending) -> np.ndarray:
        """Let every request of this event-loop pass join the queue; the first caller to resume
        computes the whole queue, and the others find their rows done when they resume in the
        same pass."""
        await asyncio.sleep(self._settings.max_wait_ms / 1000)
        if not pending.future.done() and not self._draining:
            await self._drain()
        return await pending.future

    def _end_pass(self) -> None:
        self._pass_taken = False

    def close(self) -> None:
        """Stop the model thread (on worker shutdown)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self) -> None:
        """Compute batches until the queue is empty; one caller at a time does this."""
        self._draining = True
        try:
            loop = asyncio.get_running_loop()
            while self._queue:
                batch = self._take_batch()
                if batch:
                    await self._run(batch, loop)
        finally:
            self._draining = False

    async def _run(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        """One model call for the whole batch; its failure is every caller's failure."""
        try:
            rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
            output = (
                await loop.run_in_executor(self._executor, self._observed_call, rows)
                if self._settings.run_in_thread
                else self._observed_call(rows)
            )
        except Exception as error:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self._resolve(batch, output)

    def _observed_call(self, rows: np.ndarray) -> np.ndarray:
        """The model call, timed and reported (in the model thread with `run_in_thread`:
        prometheus_client's values are thread-safe)."""
        if not self._observer:
            return self._infer(rows)
        started = time.perf_counter()
        output = self._infer(rows)
        self._observer.model_called(rows, output, time.perf_counter() - started)
        return output

    def _take_batch(self) -> list[_Pending]:
        """Queued requests up to `max_batch_rows` rows, oldest first; one at least, if any
        caller still waits (callers that timed out are dropped, their rows never computed)."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            size = len(self._queue[0].rows)
            if batch and rows + size > self._settings.max_batch_rows:
                break
            pending = self._queue.popleft()
            self._queued_rows -= size
            if not pending.future.done():
                batch.append(pending)
                rows += size
        if self._observer:
            self._observer.queue_changed(self._queued_rows)
        return batch

    @staticmethod
    def _resolve(batch: list[_Pending], output: np.ndarray) -> None:
        """Hand each request its own slice of the output, in the order its rows went in."""
        start = 0
        for pending in batch:
            end = start + len(pending.rows)
            if not pending.future.done():  # a caller that timed out no longer waits
                pending.future.set_result(output[start:end])
            start = end
