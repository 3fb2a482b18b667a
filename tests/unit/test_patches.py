"""The service's ASGI app as BentoML builds it: every nnship replacement is the class in use, in its
place, so a BentoML upgrade that bypasses one fails here instead of silently regressing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# built in a fresh interpreter: the service module reads its settings once, at import
BUILD = """
import asyncio
import json
import uvicorn
from _bentoml_impl.loader import load
from nnship.service import fastlane, patches, service
from nnship.service.oip import STATE


def stack(app):
    layer, names = app.build_middleware_stack(), []
    while True:
        names.append(f"{type(layer).__module__}.{type(layer).__qualname__}")
        if type(layer).__name__ == "PredictEndpoint":
            names[-1] += f"(enabled={layer.enabled})"
        if type(layer).__name__ == "Router":
            return names
        layer = layer.app


svc = load("nnship.service.service:NnshipService", standalone_load=True)
app = svc.to_asgi(is_main=True)
config = uvicorn.Config(app=app, log_config=None)  # as BentoML's worker builds it
config.load()
protocol = config.http_protocol_class
routes = [getattr(r, "path", "") for r in app.router.routes]
patches.install(service.SETTINGS, "irisnet")  # a second call changes nothing
top = app.build_middleware_stack()  # BentoML's metrics register once per process: one stack
lane = fastlane.find_lane(top.app)


class Broken:  # a service whose /predict raises what nothing expects
    model = "irisnet"

    async def predict_raw(self, raw, csv_body, rid):
        raise RuntimeError("unexpected")


async def drive(top):
    sent, body = [], b'{"inputs": [[1, 2, 3, 4]]}'
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"x-request-id", b"req-1")]
    scope = {"type": "http", "method": "POST", "path": "/predict", "raw_path": b"/predict",
             "headers": headers, "client": ("127.0.0.1", 1), "query_string": b""}
    await top(scope, receive, send)
    return sent


STATE.service = Broken()
sent = asyncio.run(drive(top))
STATE.service = None
print(json.dumps({
    "broken": [sent[0]["status"], dict((k.decode(), v.decode()) for k, v in sent[0]["headers"]),
               json.loads(sent[1]["body"])],
    "lane": None if lane is None else [lane.timeout, lane.semaphore._value, sorted(lane.in_progress)],
    "served": None if top.lane is None else sorted(top.lane.in_progress),
    "first": stack(app),
    "again": stack(svc.to_asgi(is_main=True)),
    "protocol": f"{protocol.__module__}.{protocol.__qualname__}",
    "routes": routes,
}))
"""

EXPECTED = [
    # POST /predict answered outermost, doing the work of the layers below for it
    "nnship.service.fastlane.FastPredict",
    "starlette.middleware.errors.ServerErrorMiddleware",
    # BentoML's request metrics, outermost: bounded path labels, websockets refused first
    "nnship.service.pathlabels.install.<locals>.BoundedPathMetrics",
    "nnship.service.pathlabels.install.<locals>._RestorePath",
    "opentelemetry.instrumentation.asgi.OpenTelemetryMiddleware",
    "nnship.service.timeouts.CancellingTimeout",  # in place of BentoML's TimeoutMiddleware
    "nnship.service.concurrency.ConcurrencyLimit",  # in place of MaxConcurrencyMiddleware
    "nnship.service.security.Guard",
    "nnship.service.jobs.JobRoutes",  # batch job limits and state in front of BentoML's task routes
    "nnship.service.endpoint.PredictEndpoint(enabled=True)",  # /predict before the router
    "nnship.service.openapi.OpenAPIDocument",
    "nnship.service.oip.MountRoot",  # /v2 answered as /v2/, no slash redirects under /v2
    "_bentoml_impl.server.app.ContextMiddleware",
    "starlette.middleware.exceptions.ExceptionMiddleware",
    "starlette.routing.Router",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The app built by BentoML's own loader, on a package directory that need not exist yet."""
    package = tmp_path_factory.mktemp("pkg") / "irisnet"
    package.mkdir()
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")),
        "BENTOML_DO_NOT_TRACK": "true",
        "NNSHIP_MODEL": str(package),
    }
    env.pop("NNSHIP_SERVE_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_middleware_stack_in_order_with_each_replacement(built):
    assert built["first"] == EXPECTED


def test_the_predict_lane_stands_in_for_the_stack_with_its_own_limits(built):
    """The lane found every layer it does the work of, with the service's timeout and limit."""
    from nnship.service.settings import Settings

    defaults = Settings()
    # no model is loaded here: the v2 infer path is added once the service is
    assert built["lane"] == [defaults.timeout_s, defaults.max_concurrency, ["/predict"]]


def test_once_a_model_is_served_the_lane_answers_its_v2_infer_path_too(built):
    assert built["served"] == ["/predict", "/v2/models/irisnet/infer"]


def test_an_unexpected_failure_on_the_lane_is_the_guards_json_500(built):
    status, headers, body = built["broken"]
    assert status == 500
    assert headers["x-request-id"] == "req-1"
    assert body == {"error": "internal error", "request_id": "req-1"}


def test_installing_twice_changes_nothing(built):
    assert built["again"] == EXPECTED


def test_uvicorn_uses_the_bounded_h11_protocol(built):
    assert built["protocol"] == "nnship.service.connections.BoundedH11Protocol"


def test_bentoml_keeps_its_own_predict_route_behind_the_endpoint(built):
    """NNSHIP_PREDICT_ROUTE=bentoml, CORS and tracing fall back to it."""
    assert "/predict" in built["routes"]


def test_the_predict_lane_stands_aside_for_a_layer_it_does_not_know():
    """A layer in front of the endpoint that the lane does not do the work of (an access log, CORS,
    anything added later) puts /predict back through BentoML's stack."""
    from starlette.middleware.errors import ServerErrorMiddleware

    from nnship.service.endpoint import PredictEndpoint
    from nnship.service.fastlane import find_lane

    class AccessLog:
        def __init__(self, app):
            self.app = app

    async def router(scope, receive, send):
        pass

    assert find_lane(ServerErrorMiddleware(AccessLog(PredictEndpoint(router)))) is None
    # and without the layers it stands in for (metrics, timeout, limit, guard) it stands aside too
    assert find_lane(ServerErrorMiddleware(PredictEndpoint(router))) is None
