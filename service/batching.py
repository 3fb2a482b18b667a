"""Adaptive batching: requests queue up while the model is busy and go to it together.

One consumer task runs inference on everything queued (up to `max_batch_size` rows, grouped by
shape) as soon as the previous batch is done, so a lone request never waits and a crowd is served in
large batches. `max_wait_ms` optionally holds a small batch back to gather more; a request that has
waited longer than `max_latency_ms` is shed with Overloaded (the service answers 503).

With `concatenate=False` (a model whose rows influence each other's outputs, such as dynamic int8
quantization with one activation scale per input tensor) the queued requests still go to the worker
thread together, but each runs as its own inference call, so an answer is the one the request would
get alone.

When the next batch should take under `inline_max_ms` (the latest call's time, scaled up when the
batch holds more rows than that call did), the consumer runs the batch itself,
on the event loop, instead of handing it to the inference thread: for a small model the hand-off
(the executor's queue and thread switch, `call_soon_threadsafe` waking the loop through its pipe)
costs more than the inference. Requests still batch: the consumer runs after the request tasks
already scheduled, so everything that arrived in one pass of the loop goes in one call. The
trade-off: while such a batch runs the loop reads no sockets, so a request arriving meanwhile waits
up to `inline_max_ms` more; a slower model (the heavy MLP: milliseconds a row) keeps the thread, so
the loop goes on reading requests during its inference. Measured on the digits CNN, one worker
(loadtests/benchmark.py, one run on 2 shared cores): at one client p50 0.49 -> 0.28 ms and server
CPU 502 -> 269 µs a request, together with service/fastlane.py.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
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
        concatenate: bool = True,
        inline_max_ms: float = 1.0,
    ):
        self.infer = infer
        self.concatenate = concatenate
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000
        self.max_wait = max_wait_ms / 1000
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnship-infer")
        self.inline_max = inline_max_ms / 1000
        self._recent = float("inf")  # seconds the latest inference call took (inf: none timed yet)
        self._recent_rows = 1  # the rows of that call

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
                    work = self._joined if self.concatenate else self._each
                    try:
                        if self._expected(group) < self.inline_max:  # fast: no hand-off
                            outs = work(group)
                        else:
                            outs = await loop.run_in_executor(self._executor, work, group)
                    except Exception as e:  # the consumer must outlive any failure
                        outs = [e] * len(group)
                    for j, out in zip(group, outs, strict=True):
                        if j.future.done():
                            continue
                        if isinstance(out, Exception):
                            j.future.set_exception(out)
                        else:
                            j.future.set_result(out)

    def _expected(self, group: list[_Job]) -> float:
        """Seconds the group's inference should take, from the latest call: scaled up by rows when
        the group holds more (so a large batch after small ones is not run on the loop), never
        down (a call's fixed cost does not shrink with its rows); one call per request unjoined."""
        rows = sum(len(j.x) for j in group)
        calls = 1 if self.concatenate else len(group)
        per_call_rows = rows / calls
        return calls * self._recent * max(1.0, per_call_rows / self._recent_rows)

    def _timed(self, x: np.ndarray) -> np.ndarray:
        """One inference, its duration and rows kept to decide where the next batch runs."""
        t = time.perf_counter()
        out = self.infer(x)
        self._recent, self._recent_rows = time.perf_counter() - t, max(1, len(x))
        return out

    def _joined(self, group: list[_Job]) -> list[np.ndarray | Exception]:
        """One inference over the group's rows, split back per request (in the worker thread)."""
        try:
            x = np.concatenate([j.x for j in group]) if len(group) > 1 else group[0].x
            out = self._timed(x)
            bounds = np.cumsum([0, *(len(j.x) for j in group)])
            return [out[a:b] for a, b in itertools.pairwise(bounds)]
        except Exception as e:
            return [e] * len(group)

    def _each(self, group: list[_Job]) -> list[np.ndarray | Exception]:
        """One inference per request (in the worker thread)."""
        outs: list[np.ndarray | Exception] = []
        for j in group:
            try:
                outs.append(self._timed(j.x))
            except Exception as e:
                outs.append(e)
        return outs
