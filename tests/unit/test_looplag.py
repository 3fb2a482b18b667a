"""The event-loop lag sampler measures how long the loop was held, and starts once per loop."""

import asyncio
import time

from nnship.service import looplag, metrics


class Recorder:
    def __init__(self):
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)

    set = observe


def test_blocked_loop_shows_as_lag(monkeypatch):
    hist, last = Recorder(), Recorder()
    monkeypatch.setattr(metrics, "EVENT_LOOP_LAG", hist)
    monkeypatch.setattr(metrics, "EVENT_LOOP_LAG_LAST", last)

    async def main():
        task = looplag.start(0.01)
        assert looplag.start(0.01) is task  # once per worker
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # pure-Python work holding the loop
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert len(hist.values) >= 3 and hist.values == last.values
    assert max(hist.values) >= 0.15
    assert sorted(hist.values)[len(hist.values) // 2] < 0.05
    assert not looplag._tasks


def test_no_loop_no_sampler():
    assert looplag.start() is None
