"""BentoML's concurrency limit, answering in nnship's error shape.

BentoML's MaxConcurrencyMiddleware sits outside nnship's guard and, at the limit, answers
`{"error": "Too many requests"}` with no Retry-After, request id or `detail`. This subclass keeps its
semaphore and skipped paths and only replaces that answer.

Effect: the answer's shape only (a client retries after Retry-After, the refusal is counted in
`nnship_requests_rejected_total{reason="concurrency_limited"}` and carries the request id); the
limit and its cost are BentoML's. BentoML's app factory imports the class by name when it builds the
app, so `nnship.service.patches.install()` (which calls `install` here) takes effect if run before.
POST /predict, answered outside the stack by `service/fastlane.py`, holds this layer's own
semaphore and gets its 429: one limit for every route.
"""

from __future__ import annotations

import os

from bentoml._internal.server.http import traffic

from nnship.service import metrics
from nnship.service.security import REQUEST_ID_RE, error_body

MESSAGE = "too many requests in flight; retry shortly"


class ConcurrencyLimit(traffic.MaxConcurrencyMiddleware):
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await super().__call__(scope, receive, send)
            return
        if self._semaphore.locked():
            await self._refuse(scope, send)
            return
        async with self._semaphore:
            await self.app(scope, receive, send)

    async def _refuse(self, scope, send) -> None:
        """429 in the standard error shape, with the request id and Retry-After."""
        metrics.reject("concurrency_limited")
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID_RE.fullmatch(given) else os.urandom(12).hex()
        body = error_body("concurrency_limited", MESSAGE, rid)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def install() -> None:
    """Make BentoML's app factory build this middleware where it would build its own."""
    traffic.MaxConcurrencyMiddleware = ConcurrencyLimit
