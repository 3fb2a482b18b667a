"""The /predict ASGI endpoint: what it answers itself and what it leaves to BentoML's router."""

import asyncio

from starlette.responses import JSONResponse

from nnship.service.endpoint import PredictEndpoint
from nnship.service.oip import STATE


class Recorder:
    """Stands in for the service: records the body it was given."""

    def __init__(self):
        self.bodies = []

    async def predict_json(self, raw):
        self.bodies.append(raw)
        return JSONResponse({"got": len(raw)})

    def refuse_predict_body(self, raw):
        """Refuses any body without `inputs`, as the validator would."""
        return None if b"inputs" in raw else JSONResponse({"error": "refused"}, status_code=400)


def call(endpoint, method, path, chunks):
    sent, passed = [], []
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def inner(scope, receive, send):
        passed.append(scope["path"])

    endpoint.app = inner
    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(endpoint(scope, receive, send))
    return sent, passed


def test_answers_post_predict_and_passes_the_rest(monkeypatch):
    svc = Recorder()
    monkeypatch.setattr(STATE, "service", svc)
    ep = PredictEndpoint(None)
    sent, passed = call(ep, "POST", "/predict", [b'{"inputs": ', b"[[1, 2]]}"])
    assert svc.bodies == [b'{"inputs": [[1, 2]]}'] and not passed  # chunks joined, router skipped
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"got":20}'
    for method, path in (
        ("GET", "/predict"),
        ("POST", "/predict/"),
        ("POST", "/v2/models/m/infer"),
    ):
        sent, passed = call(ep, method, path, [b"{}"])
        assert passed == [path] and not sent
    # a client that goes away mid-body gets nothing and costs no inference
    sent, passed = call(ep, "POST", "/predict", [])
    assert not sent and not passed and len(svc.bodies) == 1


def test_router_answers_until_the_model_is_published_or_when_disabled(monkeypatch):
    monkeypatch.setattr(STATE, "service", None)
    _, passed = call(PredictEndpoint(None), "POST", "/predict", [b"{}"])
    assert passed == ["/predict"]
    monkeypatch.setattr(STATE, "service", Recorder())
    body = [b'{"inputs": ', b"[[1, 2]]}"]
    _, passed = call(PredictEndpoint(None, enabled=False), "POST", "/predict", body)
    assert passed == ["/predict"]


def test_bentoml_s_route_gets_only_bodies_the_endpoint_would_accept(monkeypatch):
    """Disabled, the endpoint still refuses a bad body the way it would answer it; a good one goes
    to BentoML's route whole."""
    monkeypatch.setattr(STATE, "service", Recorder())
    sent, passed = call(PredictEndpoint(None, enabled=False), "POST", "/predict", [b"{}"])
    assert not passed and sent[0]["status"] == 400
    received = []

    async def inner(scope, receive, send):
        received.append(await receive())

    endpoint = PredictEndpoint(None, enabled=False)
    endpoint.app = inner
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    messages = [{"type": "http.request", "body": b'{"inputs": [[1]]}', "more_body": False}]

    async def receive():
        return messages.pop(0)

    asyncio.run(endpoint(scope, receive, lambda m: None))
    assert received == [{"type": "http.request", "body": b'{"inputs": [[1]]}', "more_body": False}]


def test_cors_needs_bentoml_s_route():
    from bentoml._internal.configuration.containers import BentoMLContainer

    before = BentoMLContainer.http.cors.enabled.get()
    assert not before and PredictEndpoint(None).enabled
    BentoMLContainer.http.cors.enabled.set(True)
    try:
        assert not PredictEndpoint(None).enabled  # CORS headers are added behind this layer
    finally:
        BentoMLContainer.http.cors.enabled.set(before)
