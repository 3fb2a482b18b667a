"""Bound the `endpoint` label of BentoML's request metrics, and refuse websockets before them.

BentoML's traffic middleware labels its request counters and histograms with the raw request path,
so every distinct unknown path (a scanner, a typo, a random id) becomes new series on /metrics
without end. This wraps that middleware: paths outside the service's known routes are reported as
one `endpoint="/__other__"` series, while routing still sees the real path (and answers 404).

That middleware is the outermost one BentoML builds (after Starlette's error handler), and it also
labels websocket handshakes with their paths. The service has no websocket route, so the wrapper
refuses every handshake before anything else sees it, whether or not paths are bounded.

Effect: the request-metric series stay one per known route plus one `/__other__`, however many
distinct paths clients send (unbounded before: each scanned path added a counter and a histogram of
BentoML's buckets to every scrape); the cost is one set lookup per request. Installed by
`nnship.service.patches.install()`: BentoML's app factory imports the class by name when it builds
the app. POST /predict's series are recorded by `service/fastlane.py` on this layer's own metric
objects, with the same labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

OTHER = "/__other__"


def install(known: Iterable[str], known_patterns: Iterable[str] = (), bound: bool = True) -> None:
    """Replace BentoML's traffic-metrics middleware class with the guarded one (idempotent)."""
    from bentoml._internal.server.http import instruments

    from nnship.service.security import refuse_websocket

    patterns = [re.compile(p) for p in known_patterns]
    paths = set(known)
    base = getattr(
        instruments.RunnerTrafficMetricsMiddleware,
        "__nnship_base__",
        instruments.RunnerTrafficMetricsMiddleware,
    )

    class _RestorePath:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if "nnship.path" in scope:
                scope = {**scope, "path": scope["nnship.path"]}
            await self.app(scope, receive, send)

    class BoundedPathMetrics(base):  # type: ignore[misc, valid-type]
        __nnship_base__ = base

        def __init__(self, app, **kwargs):
            super().__init__(_RestorePath(app), **kwargs)

        async def __call__(self, scope, receive, send):
            kind = scope["type"]
            if kind == "websocket":
                await refuse_websocket(scope, send)
                return
            path = scope.get("path", "")
            if (
                bound
                and kind == "http"
                and path not in paths
                and not any(p.fullmatch(path) for p in patterns)
            ):
                scope = {**scope, "path": OTHER, "nnship.path": path}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = BoundedPathMetrics
