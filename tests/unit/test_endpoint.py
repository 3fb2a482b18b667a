"""The /predict ASGI endpoint: what it answers itself and what it leaves to BentoML's router."""

import asyncio
import json

from starlette.responses import JSONResponse

from nnship.service.endpoint import PredictEndpoint
from nnship.service.oip import STATE
from nnship.service.validation import RequestError, Validator
from tests import manifests


class Recorder:
    """Stands in for the service: records the bodies it was given, checks them with a real validator
    of a two-feature tabular model (f0, f1)."""

    def __init__(self):
        self.bodies = []
        self.csv = []
        self.validator = Validator(manifests.manifest("mlp", (2,)), max_rows=4)

    async def predict_json(self, raw, csv_body=False):
        self.bodies.append(raw)
        self.csv.append(csv_body)
        return JSONResponse({"got": len(raw)})

    def route_predict_body(self, raw, csv_body=False):
        """The refusal, or the positional JSON body BentoML's route gets (the service's rule)."""
        try:
            x, positional = self.validator.predict_request(raw, csv_body)
        except RequestError as e:
            return JSONResponse(e.body(), status_code=e.status)
        return raw if positional else json.dumps({"inputs": x.tolist()}).encode()


def call(endpoint, method, path, chunks, headers=()):
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
    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    asyncio.run(endpoint(scope, receive, send))
    return sent, passed


def test_answers_post_predict_and_passes_the_rest(monkeypatch):
    svc = Recorder()
    monkeypatch.setattr(STATE, "service", svc)
    ep = PredictEndpoint(None)
    sent, passed = call(ep, "POST", "/predict", [b'{"inputs": ', b"[[1, 2]]}"])
    assert svc.bodies == [b'{"inputs": [[1, 2]]}'] and not passed  # chunks joined, router skipped
    assert svc.csv == [False]
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
    messages = [{"type": "http.request", "body": b'{"inputs": [[1, 2]]}', "more_body": False}]

    async def receive():
        return messages.pop(0)

    asyncio.run(endpoint(scope, receive, lambda m: None))
    assert received == [
        {"type": "http.request", "body": b'{"inputs": [[1, 2]]}', "more_body": False}
    ]


def test_cors_needs_bentoml_s_route():
    from bentoml._internal.configuration.containers import BentoMLContainer

    before = BentoMLContainer.http.cors.enabled.get()
    assert not before and PredictEndpoint(None).enabled
    BentoMLContainer.http.cors.enabled.set(True)
    try:
        assert not PredictEndpoint(None).enabled  # CORS headers are added behind this layer
    finally:
        BentoMLContainer.http.cors.enabled.set(before)


CSV = [(b"content-type", b"Text/CSV; charset=utf-8"), (b"content-length", b"13")]


def test_a_csv_body_is_answered_as_csv(monkeypatch):
    svc = Recorder()
    monkeypatch.setattr(STATE, "service", svc)
    call(PredictEndpoint(None), "POST", "/predict", [b"f1,f0\n", b"2,1\n"], CSV)
    json_type = [(b"content-type", b"application/json")]
    call(PredictEndpoint(None), "POST", "/predict", [b'{"inputs": [[1, 2]]}'], json_type)
    assert svc.bodies == [b"f1,f0\n2,1\n", b'{"inputs": [[1, 2]]}'] and svc.csv == [True, False]


def forwarded(body, headers):
    """What BentoML's route receives (scope headers, body) when the endpoint does not answer."""
    got = []

    async def inner(scope, receive, send):
        got.append((dict(scope["headers"]), (await receive())["body"]))

    endpoint = PredictEndpoint(None, enabled=False)
    endpoint.app = inner
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0)

    asyncio.run(endpoint(scope, receive, lambda m: None))
    return got[0]


def test_bentoml_s_route_gets_csv_and_records_as_positional_json(monkeypatch):
    """BentoML's IO model reads positional JSON only: CSV and records reach it in that form, with
    the content type and length of the new body; other headers pass unchanged."""
    monkeypatch.setattr(STATE, "service", Recorder())
    headers, body = forwarded(b"f1,f0\n2,1\n4,3\n", [*CSV, (b"x-request-id", b"r1")])
    assert json.loads(body) == {"inputs": [[1.0, 2.0], [3.0, 4.0]]}
    assert headers == {
        b"x-request-id": b"r1",
        b"content-type": b"application/json",
        b"content-length": str(len(body)).encode(),
    }
    records = b'{"inputs": [{"f1": 2, "f0": 1}]}'
    headers, body = forwarded(records, [(b"content-type", b"application/json")])
    assert json.loads(body) == {"inputs": [[1.0, 2.0]]}
    assert headers[b"content-length"] == str(len(body)).encode()
    positional = b'{"inputs": [[1, 2]]}'  # passed as it came, not re-encoded
    assert forwarded(positional, [(b"content-type", b"application/json")]) == (
        {b"content-type": b"application/json"},
        positional,
    )
