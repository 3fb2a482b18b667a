"""Reading and writing beside inference: a reader thread and a writer thread, each behind a bounded
queue (ONNX Runtime releases the GIL while it runs, so the three overlap), and a pool of workers
that those two threads can hand parts to, in order, on machines with cores to spare (Parquet
decoding, NumPy's checks and Arrow's encoders release the GIL too)."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from nnship.cpus import usable_cores

MAX_WORKERS = 8

_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetch:
    """Iterates `items` on a thread, at most `depth` ahead; the thread's error is raised here."""

    def __init__(self, items: Iterable[Any], depth: int = 2):
        self._items = items
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="nnship-read", daemon=True)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # carried to the consumer
            self._put(_Failed(e))

    def __enter__(self) -> Iterator[Any]:
        self._thread.start()
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Consumer:
    """Calls `handle` on each item put, on a thread, at most `depth` items behind; its first error
    is raised by the next `put` or by `close`."""

    def __init__(self, handle: Callable[[Any], None], depth: int = 2):
        self._handle = handle
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="nnship-write", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is None:
                try:
                    self._handle(item)
                except BaseException as e:
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        """Queue an item, waiting while the queue is full."""
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait for every item put to be handled."""
        self._queue.put(_END)
        self._thread.join()
        self._raise()


def default_workers(threads: int) -> int:
    """Workers beside inference when none are asked for: the cores ONNX Runtime's `threads` leave
    (0 threads: all cores, so one worker), at least 1 and at most MAX_WORKERS."""
    n = usable_cores()
    return max(1, min(MAX_WORKERS, n - (threads or n)))


class Workers(ThreadPoolExecutor):
    """A thread pool that knows its size: the work it is given runs `size` at a time, one more
    waiting for each (so that a worker finishing finds the next item ready)."""

    def __init__(self, size: int):
        super().__init__(size, thread_name_prefix="nnship-part")
        self.size = size

    @property
    def ahead(self) -> int:
        return self.size + 1


def worker_pool(workers: int) -> Workers | None:
    """A pool for `workers` > 1; None for one (the reader and writer threads do the work)."""
    return Workers(workers) if workers > 1 else None


def ordered(pool: Workers, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
    """fn(item) for each item, run on the pool at most `pool.ahead` at a time, given back in the
    items' order; a call's error is raised here when its turn comes, and the calls not yet begun are
    cancelled when the caller stops early. An error of `items` itself comes after the results of
    the items before it, as it would without a pool."""
    pending: deque[Future] = deque()
    source = iter(items)
    try:
        while True:
            try:
                item = next(source)
            except StopIteration:
                break
            except Exception:
                while pending:
                    yield pending.popleft().result()
                raise
            pending.append(pool.submit(fn, item))
            if len(pending) >= pool.ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
