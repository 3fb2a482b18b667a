"""The request timeout answers 504 when late, and leaves no timer behind when on time."""

import asyncio
import contextlib

from nnship.service.timeouts import CancellingTimeout


def _run(app, n=1):
    async def main():
        loop = asyncio.get_running_loop()
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        for _ in range(n):
            await app({"type": "http", "path": "/x"}, receive, send)
        # cancelled timers are purged lazily: count the live ones
        return sent, sum(not h.cancelled() for h in loop._scheduled)

    return asyncio.run(main())


async def fast(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow(scope, receive, send):
    await asyncio.sleep(5)
    await fast(scope, receive, send)


def test_no_timer_left_per_request():
    sent, pending = _run(CancellingTimeout(fast, timeout=30), n=200)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 200
    assert pending == 0  # BentoML's own middleware leaves one 30 s timer per request here


def test_late_answer_is_a_504():
    sent, _ = _run(CancellingTimeout(slow, timeout=0.05))
    assert sent[0]["status"] == 504
    assert b"not able to answer within 0.05 seconds" in sent[1]["body"]


def test_bentoml_builds_the_fixed_middleware():
    from bentoml._internal.server.http import traffic

    from nnship.service import timeouts

    timeouts.install()
    assert traffic.TimeoutMiddleware is CancellingTimeout


async def swallows_cancel(scope, receive, send):
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(5)
    await fast(scope, receive, send)


def test_an_app_that_answers_after_the_deadline_does_not_break_the_middleware():
    """The app swallows the timeout's cancellation and answers anyway: its answer goes out whole,
    and no 504 is started after it (no second response, no RuntimeError from the timer)."""
    sent, pending = _run(CancellingTimeout(swallows_cancel, timeout=0.05))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
    assert pending == 0


def test_the_deadline_covers_the_answer_a_client_never_reads():
    """A send stalled by a client that never reads is cut at the deadline: the request ends (its
    concurrency slot freed) with no 504 after the answer started."""
    sent = []

    async def stalled_send(message):
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the transport's buffer never drains

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def main():
        app = CancellingTimeout(fast, timeout=0.05)
        await asyncio.wait_for(
            app({"type": "http", "method": "POST", "path": "/x"}, receive, stalled_send), 2
        )

    asyncio.run(main())
    assert sent == ["http.response.start", "http.response.body"]
