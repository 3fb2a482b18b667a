"""POST /predict, and POST /v2/models/{model}/infer of the served model, answered by one ASGI layer
outside BentoML's middleware stack, doing that stack's work for them in one place.

A /predict through the stack BentoML builds passes eight layers (Starlette's error handler, the
traffic metrics, a path restorer, OpenTelemetry, the timeout, the concurrency limit, the guard, the
endpoint), each an `await` with its own send wrapper, scope copy or label lookup; a v2 inference
passes those and the router, the mount and the v2 app's own middleware. py-spy on the digits CNN
at 16 clients put 13% of the worker's samples in those layers and another 5% in metric label
lookups. This layer, installed outermost by `nnship.service.patches.install()`, answers both
itself with the very objects those layers hold, in their order:

- BentoML's traffic metrics: the same series and labels (`endpoint="/predict"`, service name and
  version, response code, runner name), the in-progress gauge and the last-request timestamp, with
  the label children looked up once per response code instead of four times per request;
- the request timeout (`timeouts.CancellingTimeout`'s deadline over the whole exchange, its 504);
- the concurrency limit (`concurrency.ConcurrencyLimit`'s own semaphore and its 429);
- the guard (`security.Guard`'s own checks: path, repeated headers, request id, API key and
  auth-failure limit, rate limit, content type, body limit while reading, rejection counting,
  the request id on every answer, a JSON 500 for anything that raises);
- the endpoint (`PredictEndpoint`'s parsing, validation, batching and answer; for v2, the v2 app's
  `oip.infer_raw`). The versioned v2 infer path, which BentoML's metrics label `/__other__`, is left
  to the stack.

OpenTelemetry is skipped: the lane runs only while tracing is off, when that layer passes every
request on untouched. The lane checks the stack it wraps when it first answers: unless every layer
in front of the endpoint is one it stands in for (or one that leaves POST /predict alone), and the
endpoint answers /predict itself, it passes every request on and BentoML's stack answers as before
(tracing, CORS, the access log and NNSHIP_PREDICT_ROUTE=bentoml all end up there). Every other
request goes to BentoML's stack unchanged; drain is the HTTP protocol's and applies alike.

Measured (loadtests/benchmark.py, digits CNN, one worker, 2 cores shared with wrk and other work,
so compare within a run): with the lane and the loop-side batches of service/batching.py, server CPU
per request at 64 clients fell from 228 to 168-213 µs (BentoML's route in the same runs: 370-486 µs;
the bare ASGI app doing one ONNX Runtime call per request: 165-168 µs), and at one client from 502
to 269-293 µs with p50 0.49 -> 0.28 ms (bare: 0.19-0.24 ms). In the 16-client profile the layers'
own work (middleware, guard, metrics) went from about 48 to 7 µs a request, plus 25 µs in the lane
itself. The lane costs about 12 µs a request in process (a stub service, no sockets).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from timeit import default_timer
from typing import Any

from starlette.middleware.errors import ServerErrorMiddleware

from nnship.service import metrics, oip
from nnship.service.concurrency import ConcurrencyLimit
from nnship.service.endpoint import PredictEndpoint, read_body
from nnship.service.jobs import JobRoutes
from nnship.service.oip import STATE
from nnship.service.security import (
    Guard,
    check_path,
    check_repeated,
    has_body,
    read_headers,
    request_id,
)
from nnship.service.timeouts import CancellingTimeout

log = logging.getLogger(__name__)
JSON = (b"content-type", b"application/json")
INFER_HEADER_LENGTH = oip.HEADER_LENGTH.encode()


def _passes_predict(layer: Any) -> bool:
    """Layers that leave POST /predict as they found it (with tracing off, for OpenTelemetry)."""
    name = type(layer).__name__
    return isinstance(layer, ServerErrorMiddleware | JobRoutes) or name in (
        "_RestorePath",
        "OpenTelemetryMiddleware",
    )


class _Lane:
    """The stack's objects the lane works with, found once in the built stack."""

    def __init__(
        self, traffic: Any, timeout: float, limit: ConcurrencyLimit, guard: Guard, infer: str | None
    ) -> None:
        from bentoml._internal.context import server_context

        if not traffic._is_setup:
            traffic._setup()
        self.timeout, self.limit, self.guard = timeout, limit, guard
        self.semaphore = limit._semaphore
        self.infer = infer  # the v2 infer path the lane answers too (None: the stack answers it)
        self.base = {
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        self.traffic = traffic
        self.stamp = None
        if not "/predict".startswith(tuple(traffic.skip_paths)):
            self.stamp = traffic.metrics_last_request_timestamp.labels(**self.base)
        self.in_progress = {
            path: traffic.metrics_request_in_progress.labels(endpoint=path, **self.base)
            for path in ("/predict", infer)
            if path is not None
        }
        self._by_status: dict[tuple[str, int], tuple[Any, Any]] = {}

    def record(self, path: str, status: int, seconds: float) -> None:
        """BentoML's request counter and duration for one finished answer."""
        children = self._by_status.get((path, status))
        if children is None:
            labels = {"endpoint": path, **self.base, "http_response_code": status}
            children = (
                self.traffic.metrics_request_total.labels(**labels),
                self.traffic.metrics_request_duration.labels(**labels),
            )
            self._by_status[(path, status)] = children
        children[0].inc()
        children[1].observe(seconds)


def find_lane(app: Any) -> _Lane | None:
    """The lane's objects when the stack in front of the endpoint is what the lane stands in for."""
    from bentoml._internal.server.http import instruments

    base = getattr(
        instruments.RunnerTrafficMetricsMiddleware,
        "__nnship_base__",
        instruments.RunnerTrafficMetricsMiddleware,
    )
    traffic = timeout = limit = guard = None
    layer = app
    while layer is not None:
        if isinstance(layer, PredictEndpoint):
            if not layer.enabled or layer.path != "/predict":
                return None
            break
        if isinstance(layer, base) and traffic is None:
            traffic = layer
        elif isinstance(layer, CancellingTimeout) and timeout is None:
            timeout = layer.timeout
        elif isinstance(layer, ConcurrencyLimit) and limit is None:
            limit = layer
        elif isinstance(layer, Guard) and guard is None:
            guard = layer
        elif not _passes_predict(layer):
            return None  # a layer the lane does not stand in for (CORS, access log, ...)
        layer = getattr(layer, "app", None)
    if layer is None or None in (traffic, timeout, limit, guard):
        return None
    if "/predict" in limit.skip_paths:
        return None
    infer = _infer_path(layer, limit, traffic)
    return _Lane(traffic, timeout, limit, guard, infer)


# between the /predict endpoint and the router, the layers that leave a v2 inference untouched
PASSES_INFER = ("OpenAPIDocument", "MountRoot", "ServeToken", "ContextMiddleware")


def _infer_path(endpoint: PredictEndpoint, limit: ConcurrencyLimit, traffic: Any) -> str | None:
    """The served model's unversioned v2 infer path when nothing behind the /predict endpoint but
    the router and layers that pass it on would see that request, else None."""
    svc = STATE.service
    if svc is None:
        return None
    path = f"{oip.MOUNT}/models/{svc.model}/infer"
    if path in limit.skip_paths or path.startswith(tuple(traffic.skip_paths)):
        return None
    layer = endpoint.app
    while type(layer).__name__ in PASSES_INFER:
        layer = getattr(layer, "app", None)
    if type(layer).__name__ == "ExceptionMiddleware":
        layer = layer.app
    if type(layer).__name__ != "Router":
        return None
    mounted = any(getattr(r, "path", None) == oip.MOUNT for r in layer.routes)
    return path if mounted else None


class FastPredict:
    """The outermost layer: POST /predict answered here, everything else passed to BentoML's stack."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lane: _Lane | None = None
        self.checked = False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or STATE.service is None:
            await self.app(scope, receive, send)
            return
        if not self.checked:
            self.lane, self.checked = find_lane(self.app), True
        lane, path = self.lane, scope["path"]
        if lane is None or (path != "/predict" and path != lane.infer):
            await self.app(scope, receive, send)
            return
        await self._answer(lane, path, scope, receive, send)

    async def _answer(self, lane: _Lane, path: str, scope, receive, send) -> None:
        """BentoML's traffic metrics around the whole exchange, under the request timeout
        (CancellingTimeout's rules), within the concurrency limit (ConcurrencyLimit's 429)."""
        if lane.stamp is not None:
            lane.stamp.set_to_current_time()
        start = default_timer()
        status = 0
        started = finished = False

        async def observed(message) -> None:
            nonlocal status, started, finished
            started = True  # set before sending: a send stalled by the client counts as started
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body"):
                lane.record(path, status, max(default_timer() - start, 0))
            await send(message)
            finished = message["type"] == "http.response.body" and not message.get("more_body")

        in_progress = lane.in_progress[path]
        in_progress.inc()
        try:
            async with asyncio.timeout(lane.timeout):
                if lane.semaphore.locked():
                    await lane.limit._refuse(scope, observed)
                    return
                async with lane.semaphore:
                    await self._guarded(lane, path, scope, receive, observed)
        except TimeoutError:
            if started:
                if not finished:
                    log.warning(
                        "POST %r: answer not taken within %s s; request dropped, its slot freed",
                        path,
                        lane.timeout,
                    )
                return
            await CancellingTimeout(None, lane.timeout)._late(observed)
        finally:
            in_progress.dec()

    async def _guarded(self, lane: _Lane, path: str, scope, receive, send) -> None:
        """The guard's checks, then the answer; a JSON 500 for anything that raises."""
        guard = lane.guard
        headers, repeated = read_headers(scope["headers"])
        rid = request_id(headers)
        with_body = has_body(headers)
        refusal = check_path(scope) or check_repeated(repeated)
        if refusal is None:
            addr = (scope.get("client") or ("-",))[0]
            refusal = guard.admit(addr, headers, with_body, path)
        if refusal is not None:
            await guard._reply(send, refusal, rid)
            return
        if with_body:
            raw = await guard._read_body(receive, send, rid, guard.body_limit(path))
        else:
            raw = await read_body(receive)
        if raw is None:
            return
        started = False
        try:
            svc = STATE.service
            if path == "/predict":
                ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
                status, hdrs, body = await svc.predict_raw(raw, ctype == "text/csv", rid)
            else:
                answer = await oip.infer_raw(svc, raw, _header_length(scope), rid)
                status, hdrs, body = answer.status_code, list(answer.raw_headers), answer.body
            reason = next((v.decode() for k, v in hdrs if k == b"x-nnship-reject"), None)
            if reason is not None:
                metrics.reject(reason)
            elif with_body and status == 400:
                metrics.reject("malformed")
            hdrs.append((b"x-request-id", rid.encode()))
            started = True
            await send({"type": "http.response.start", "status": status, "headers": hdrs})
            await send({"type": "http.response.body", "body": body})
        except Exception:
            log.exception("request POST %s failed (request id %s)", path, rid)
            if not started:
                await _internal_error(send, rid)


def _header_length(scope) -> str | None:
    """The binary extension's Inference-Header-Content-Length (the first, as Starlette reads it)."""
    for name, value in scope["headers"]:
        if name == INFER_HEADER_LENGTH:
            return value.decode("latin-1")
    return None


async def _internal_error(send: Callable, rid: str) -> None:
    """The guard's JSON 500."""
    body = json.dumps({"error": "internal error", "request_id": rid}).encode()
    headers = [JSON, (b"x-request-id", rid.encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install() -> None:
    """Wrap the app BentoML's service factory builds in the lane (idempotent)."""
    from _bentoml_impl.server import app as bentoml_app

    factory = bentoml_app.ServiceAppFactory
    if getattr(factory.__call__, "__nnship_lane__", False):
        return
    build_app = factory.__call__

    def build_with_lane(self):
        app = build_app(self)
        build_stack = app.build_middleware_stack
        app.build_middleware_stack = lambda: FastPredict(build_stack())
        return app

    build_with_lane.__nnship_lane__ = True
    factory.__call__ = build_with_lane
