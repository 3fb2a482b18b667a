"""Adaptive batching: requests queue up while the model is busy and go to it together.

One consumer task runs inference on everything queued (up to `max_batch_size` rows, grouped by
shape) as soon as the previous batch is done, so a lone request never waits and a crowd is served in
large batches. `max_wait_ms` optionally holds a small batch back to gather more; a request that has
waited longer than `max_latency_ms` is shed with Overloaded (the service answers 503).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class Overloaded(Exception):
    """The request waited longer than max_latency_ms in the queue."""


@dataclass
class _Job:
    enqueued: float
    x: np.ndarray
    future: asyncio.Future


class AdaptiveBatcher:
    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_latency_ms: float,
        max_wait_ms: float = 0.0,
    ):
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000
        self.max_wait = max_wait_ms / 1000
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnship-infer")

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())
        job = _Job(time.monotonic(), x, loop.create_future())
        self._queue.append(job)
        self._wake.set()
        return await job.future

    def _take(self) -> list[_Job]:
        """Whole requests, oldest first, up to max_batch_size rows (a larger request goes alone)."""
        jobs, rows = [], 0
        now = time.monotonic()
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # the client went away
                self._queue.popleft()
                continue
            if now - job.enqueued > self.max_latency:
                self._queue.popleft()
                job.future.set_exception(Overloaded())
                continue
            if jobs and rows + len(job.x) > self.max_batch_size:
                break
            jobs.append(self._queue.popleft())
            rows += len(job.x)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if self.max_wait and sum(len(j.x) for j in self._queue) < self.max_batch_size:
                    await asyncio.sleep(self.max_wait)
                jobs = self._take()
                by_shape: dict[tuple[int, ...], list[_Job]] = collections.defaultdict(list)
                for job in jobs:
                    by_shape[job.x.shape[1:]].append(job)
                for group in by_shape.values():
                    x = np.concatenate([j.x for j in group]) if len(group) > 1 else group[0].x
                    try:
                        out = await loop.run_in_executor(self._executor, self.infer, x)
                    except Exception as e:
                        for j in group:
                            if not j.future.done():
                                j.future.set_exception(e)
                        continue
                    start = 0
                    for j in group:
                        n = len(j.x)
                        if not j.future.done():
                            j.future.set_result(out[start : start + n])
                        start += n
