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
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from iris_bento.errors import Overloaded, TimedOut
from iris_bento.inference import PredictProba
from iris_bento.logs import RateLimitedWarning
from iris_bento.settings import BatchingSettings

if TYPE_CHECKING:
    from prometheus_client import Histogram


@cache
def batch_rows_histogram() -> Histogram:
    """Rows per model call. Made on first use, inside the worker: prometheus_client picks its
    multi-process storage when first imported, so importing it before BentoML has set up
    PROMETHEUS_MULTIPROC_DIR would keep this metric out of /metrics."""
    from prometheus_client import Histogram

    return Histogram(
        "iris_model_batch_rows",
        "Rows per model call (requests coalesced by adaptive batching).",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
    )


class _Pending:
    """One request's rows and the future that receives its slice of the model's output."""

    __slots__ = ("future", "rows")

    def __init__(self, rows: np.ndarray, future: asyncio.Future[np.ndarray]) -> None:
        self.rows = rows
        self.future = future


class MicroBatcher:
    """Coalesces concurrent `infer` calls into few model calls; never splits one request."""

    def __init__(self, infer: PredictProba, settings: BatchingSettings) -> None:
        self._infer = infer
        self._settings = settings
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._draining = False
        # One thread, used only with `run_in_thread`: model calls stay serialised.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._batch_rows = batch_rows_histogram()
        self._overloads = RateLimitedWarning(
            logging.getLogger("iris_bento.batching"), "batching queue full: answering 503"
        )

    async def infer(self, rows: np.ndarray) -> np.ndarray:
        """The model's output for `rows`, computed together with whatever else is queued."""
        if not self._settings.enabled:
            self._batch_rows.observe(len(rows))
            return self._infer(rows)
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
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                # Let every request of this event-loop pass join the queue; the first caller to
                # resume computes the whole queue, and the others find their rows done when they
                # resume in the same pass.
                await asyncio.sleep(self._settings.max_wait_ms / 1000)
                if not pending.future.done() and not self._draining:
                    await self._drain()
                return await pending.future
        except TimeoutError:
            raise TimedOut(
                f"the model did not answer within {self._settings.timeout_s:g} s"
            ) from None

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
            self._batch_rows.observe(len(rows))
            output = (
                await loop.run_in_executor(self._executor, self._infer, rows)
                if self._settings.run_in_thread
                else self._infer(rows)
            )
        except Exception as error:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self._resolve(batch, output)

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
