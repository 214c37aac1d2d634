"""Micro-batching: concurrent requests wait a few milliseconds and are predicted as one batch.

A model call has a fixed cost (hundreds of trees visited once per call) that is far larger than the cost
of one more row, so under load gathering requests raises throughput and lowers tail latency. The batcher
waits (at most ``max_wait_ms``) only while other requests are still being received; a lone request is
predicted at once. All model
calls run on one worker thread, off the event loop; a call takes ``manager.current`` once, so a swap
never changes the model in the middle of a batch.

A request waits about ``timeout_seconds`` (PREDICT_TIMEOUT_SECONDS) for its model call, queue included, then
gets ``PredictionTimeoutError`` (504). Gathered requests are timed by one watchdog task that wakes every
``timeout_seconds / 10`` (at most 0.25 s, so an answer may come that much late) and fails the expired ones,
oldest first: a request pays a deque append instead of an ``asyncio.wait_for`` (measured in
``bench/request_overhead.py``); while a call runs longer than that the service is not ready. The batching
task is supervised: if it ends without ``stop()`` (an exception escaped it, or it was cancelled), what
waits on it gets ``BatcherFailedError`` (503), as does every later request, and the service stays not ready
with the reason; `/health/live` answers 503, so the kubelet restarts the container (the task itself is not
restarted in place: a batcher that died once may die again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_api.metrics import Metrics
from inference_api.model_manager import LoadedModel, ModelManager

log = logging.getLogger(__name__)


class ModelNotReadyError(RuntimeError):
    """No model is loaded; the reason says why."""


class PredictionTimeoutError(RuntimeError):
    """The model call took longer than PREDICT_TIMEOUT_SECONDS (answered 504)."""


class BatcherFailedError(RuntimeError):
    """The micro-batcher task stopped unexpectedly; the reason says how (answered 503)."""


class InFlight:
    """HTTP requests being answered right now (kept by the edge middleware, read by the batcher)."""

    def __init__(self) -> None:
        self.count = 0


@dataclass
class _Pending:
    rows: Sequence[dict[str, Any]]
    future: asyncio.Future[tuple[LoadedModel, np.ndarray]]
    deadline: float  # event-loop time after which the request gets PredictionTimeoutError


class Batcher:
    """Runs predictions on one thread, gathering concurrent single requests when enabled."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        enabled: bool = True,
        max_rows: int = 256,
        max_wait_ms: float = 2.0,
        in_flight: InFlight | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self.enabled = enabled
        self._max_rows = max_rows
        self._max_wait = max_wait_ms / 1000.0
        self._in_flight = in_flight
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._watched: deque[_Pending] = deque()  # gathered requests in arrival order (deadline order)
        self._timeout = timeout_seconds
        self._stopping = False
        self._busy_since: float | None = None  # monotonic start of the model call running now
        self._batch: list[_Pending] = []  # requests taken from the queue and not answered yet
        self._carry: _Pending | None = None  # a request taken from the queue for the next batch
        self.failure: str | None = None  # why the batching task died (None: alive or not used)

    def start(self) -> None:
        """Start gathering (call from the event loop)."""
        if self.enabled:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")
            self._task.add_done_callback(self._supervise)
            self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="predict-timeouts")
            self._watchdog.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """The batching task ended: unless ``stop()`` ended it, fail what waits on it and record why."""
        if self._stopping:
            return
        error = None if task.cancelled() else task.exception()
        how = "it was cancelled" if error is None else f"{type(error).__name__}: {error}"
        self.failure = f"the micro-batcher stopped ({task.get_name()}: {how}); restart the pod"
        self._metrics.batcher_failures.inc()
        log.error("%s", self.failure, exc_info=error)
        self._fail_waiting(self.failure)

    def _fail_waiting(self, reason: str) -> None:
        """Answer ``BatcherFailedError(reason)`` to every gathered request not answered yet."""
        waiting = [*self._batch, *([self._carry] if self._carry else []), *self._watched]
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(BatcherFailedError(reason))

    def busy_seconds(self) -> float | None:
        """How long the model call running now has run (seconds), or None when the worker is idle."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    def unhealthy_reason(self) -> str | None:
        """Why the service cannot answer now (batcher dead, or a model call stuck past the timeout), or None."""
        if self.failure is not None:
            return self.failure
        busy = self.busy_seconds()
        if busy is not None and busy >= self._timeout:
            return f"a model call has been running for {busy:.1f} s, over PREDICT_TIMEOUT_SECONDS={self._timeout:g}"
        return None

    async def stop(self) -> None:
        """Stop gathering and release the worker thread."""
        self._stopping = True
        for task in (self._task, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_waiting("the service is stopping")  # nothing waits for a task that no longer runs
        # A model call stuck past PREDICT_TIMEOUT_SECONDS must not hold up the shutdown (the log flush follows).
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _predict(self, rows: Sequence[dict[str, Any]]) -> tuple[LoadedModel, np.ndarray]:
        model = self._manager.current
        if model is None:
            raise ModelNotReadyError(self._manager.not_ready_reason)
        self._metrics.batch_rows.observe(len(rows))
        self._busy_since = time.monotonic()
        try:
            return model, model.predictor.predict_proba(rows)
        finally:
            self._busy_since = None

    async def predict(self, rows: Sequence[dict[str, Any]], gather: bool = True) -> tuple[LoadedModel, np.ndarray]:
        """The model that answered and its probabilities for ``rows`` (shape len(rows) x classes, columns in
        its ``classes_`` order).

        Raises ``ModelNotReadyError`` (no model), ``BatcherFailedError`` (the batching task died) or
        ``PredictionTimeoutError`` (no answer within ``timeout_seconds``).
        """
        if self.failure is not None:
            raise BatcherFailedError(self.failure)
        if self._manager.current is None:
            raise ModelNotReadyError(self._manager.not_ready_reason)
        if not gather or not self.gathers(len(rows)):
            loop = asyncio.get_running_loop()
            return await self._bounded(loop.run_in_executor(self._executor, self._predict, rows), len(rows))
        return await self.enqueue(rows)  # the watchdog sets PredictionTimeoutError after the deadline

    def gathers(self, rows: int) -> bool:
        """Whether a request of ``rows`` rows would be gathered into a micro-batch now (batching on and its
        task started, ``rows`` under MICROBATCH_MAX_ROWS)."""
        return self._queue is not None and rows < self._max_rows

    def enqueue(self, rows: Sequence[dict[str, Any]]) -> asyncio.Future[tuple[LoadedModel, np.ndarray]]:
        """Queue ``rows`` for the next micro-batch without waiting (call from the event loop, after
        ``gathers``); the future gets what ``predict`` returns or raises, the timeout included."""
        assert self._queue is not None, "enqueue() needs the batching task: check gathers() first"
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, loop.create_future(), loop.time() + self._timeout)
        if self.failure is not None:  # the task that would answer it is gone
            pending.future.set_exception(BatcherFailedError(self.failure))
            return pending.future
        self._queue.put_nowait(pending)
        self._watched.append(pending)
        return pending.future

    async def _watch(self) -> None:
        """Fail the gathered requests whose deadline has passed, every ``timeout / 10`` (at most 0.25 s)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self._timeout / 10, 0.25))
            self._expire(loop.time())

    def _expire(self, now: float) -> None:
        """Answer ``PredictionTimeoutError`` to the gathered requests still waiting at event-loop time ``now``
        past their deadline, and forget the answered ones (the deque is in deadline order)."""
        watched = self._watched
        while watched and (watched[0].future.done() or watched[0].deadline <= now):
            pending = watched.popleft()
            if not pending.future.done():
                self._metrics.prediction_timeouts.inc()
                pending.future.set_exception(PredictionTimeoutError(self._timeout_message(len(pending.rows))))

    def _timeout_message(self, rows: int) -> str:
        return (
            f"no prediction for {rows} row(s) within {self._timeout:g} s (PREDICT_TIMEOUT_SECONDS), the wait for "
            "the model thread included; while one model call runs longer, the service is not ready"
        )

    async def _bounded(
        self, future: asyncio.Future[tuple[LoadedModel, np.ndarray]], rows: int
    ) -> tuple[LoadedModel, np.ndarray]:
        """``future``'s result, or ``PredictionTimeoutError`` after ``timeout_seconds`` (the call itself cannot
        be interrupted: it finishes on the worker thread and its result is dropped)."""
        try:
            return await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            self._metrics.prediction_timeouts.inc()
            raise PredictionTimeoutError(self._timeout_message(rows)) from None

    def _others_coming(self, gathered: int) -> bool:
        """Whether requests not yet in the batch are being received: waiting only pays off for them."""
        return self._in_flight is None or self._in_flight.count > gathered

    async def _gather(self, first: _Pending) -> list[_Pending]:
        """``first`` and the requests that arrive while others are still being received (at most
        ``max_wait_ms``, ``max_rows`` rows); one that would overflow is kept in ``_carry`` for the next batch."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch, size = [first], len(first.rows)
        self._batch = batch
        deadline = loop.time() + self._max_wait
        while size < self._max_rows:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0 or not self._others_coming(len(batch)):
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(item.rows) > self._max_rows:
                self._carry = item  # held for the next batch (failed too if the batcher dies)
                break
            batch.append(item)
            size += len(item.rows)
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first, self._carry = self._carry or await self._queue.get(), None
            batch = await self._gather(first)
            rows = [row for pending in batch for row in pending.rows]
            try:
                model, probabilities = await loop.run_in_executor(self._executor, self._predict, rows)
            except Exception as exc:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            start = 0
            for pending in batch:
                stop = start + len(pending.rows)
                if not pending.future.done():
                    pending.future.set_result((model, probabilities[start:stop]))
                start = stop
            self._batch = []
