"""Event-loop lag of a worker: how late a periodic sleep wakes up, as nnship_event_loop_lag_seconds."""

from __future__ import annotations

import asyncio
import logging

from nnship.service import metrics

log = logging.getLogger(__name__)

INTERVAL_S = 0.1  # ten cheap wake-ups a second
_tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones


async def sample(interval: float = INTERVAL_S) -> None:
    """Forever: sleep `interval`, record how much later than asked the loop woke us."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - start - interval)
        metrics.EVENT_LOOP_LAG.observe(lag)
        metrics.EVENT_LOOP_LAG_LAST.set(lag)


def start(interval: float = INTERVAL_S) -> asyncio.Task | None:
    """Start the sampler on the running loop (once per worker); None when no loop runs here."""
    if _tasks:
        return next(iter(_tasks))
    try:
        task = asyncio.get_running_loop().create_task(sample(interval), name="nnship-looplag")
    except RuntimeError:
        log.debug("no running event loop: event-loop lag is not sampled")
        return None
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task
