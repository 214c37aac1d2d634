"""Micro-batching: concurrent requests wait a few milliseconds and are predicted as one batch.

A model call has a fixed cost (hundreds of trees visited once per call) that is far larger than the cost
of one more row, so under load gathering requests raises throughput and lowers tail latency. The batcher
waits (at most ``max_wait_ms``) only while other requests are still being received; a lone request is
predicted at once. All model
calls run on one worker thread, off the event loop; a call takes ``manager.current`` once, so a swap
never changes the model in the middle of a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_api.metrics import Metrics
from inference_api.model_manager import LoadedModel, ModelManager


class ModelNotReadyError(RuntimeError):
    """No model is loaded; the reason says why."""


class InFlight:
    """HTTP requests being answered right now (kept by the edge middleware, read by the batcher)."""

    def __init__(self) -> None:
        self.count = 0


@dataclass
class _Pending:
    rows: Sequence[dict[str, Any]]
    future: asyncio.Future[tuple[LoadedModel, np.ndarray]]


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

    def start(self) -> None:
        """Start gathering (call from the event loop)."""
        if self.enabled:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop gathering and release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def _predict(self, rows: Sequence[dict[str, Any]]) -> tuple[LoadedModel, np.ndarray]:
        model = self._manager.current
        if model is None:
            raise ModelNotReadyError(self._manager.not_ready_reason)
        self._metrics.batch_rows.observe(len(rows))
        return model, model.predictor.predict_proba(rows)

    async def predict(self, rows: Sequence[dict[str, Any]], gather: bool = True) -> tuple[LoadedModel, np.ndarray]:
        """The model that answered and its probabilities for ``rows`` (columns in its ``classes_`` order)."""
        if self._manager.current is None:
            raise ModelNotReadyError(self._manager.not_ready_reason)
        loop = asyncio.get_running_loop()
        if self._queue is None or not gather or len(rows) >= self._max_rows:
            return await loop.run_in_executor(self._executor, self._predict, rows)
        future: asyncio.Future[tuple[LoadedModel, np.ndarray]] = loop.create_future()
        self._queue.put_nowait(_Pending(rows, future))
        return await future

    def _others_coming(self, gathered: int) -> bool:
        """Whether requests not yet in the batch are being received: waiting only pays off for them."""
        return self._in_flight is None or self._in_flight.count > gathered

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch, size = [first], len(first.rows)
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
                    carry = item
                    break
                batch.append(item)
                size += len(item.rows)
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
