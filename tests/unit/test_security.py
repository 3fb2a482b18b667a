"""The guard's rules without a server: token buckets on a fake clock, what is public, bad paths,
websockets, failed authentications and which proxies uvicorn may believe."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from nnship.service.security import (
    MAX_RETRY_AFTER,
    Guard,
    TokenBuckets,
    retry_after,
    trust_forwarded,
)
from nnship.service.settings import Settings

KEY = "k3y"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_token_buckets_on_an_injected_clock():
    clock = Clock()
    b = TokenBuckets(rate=0.5, burst=2, now=clock)
    assert b.wait("a") == 0 and b.take("a") == 0 and b.take("a") == 0
    assert b.wait("a") == pytest.approx(2.0) and b.take("a") == pytest.approx(2.0)
    assert b.take("b") == 0  # other clients unaffected
    clock.t += 2.0
    assert b.wait("a") == 0 and b.take("a") == 0 and b.wait("a") > 0


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def call(guard: Guard, method: str, path: str, headers=(), client="10.0.0.1", raw_path=None):
    """Status, headers and JSON body of one request through the guard."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "client": (client, 1),
    }
    asyncio.run(guard(scope, receive, send))
    hdrs = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    body = sent[1]["body"]
    return sent[0]["status"], hdrs, json.loads(body) if body != b"{}" else {}


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("NNSHIP_API_KEY", KEY)

    def make(**settings) -> Guard:
        return Guard(_app, Settings(**settings))

    return make


@pytest.mark.parametrize(
    ("method", "path", "protect_all", "public"),
    [
        ("GET", "/livez", True, True),
        ("HEAD", "/healthz", True, True),
        ("GET", "/readyz", False, True),
        ("GET", "/readyz", True, False),
        ("GET", "/metrics", False, True),
        ("GET", "/docs.json", False, True),
        ("GET", "/static_content/index.css", False, True),
        ("GET", "/static_content/../predict", False, False),
        ("GET", "/v2/models/iris", False, True),
        ("GET", "/v2/models/iris/versions/3/ready", False, True),
        ("GET", "/v2/models/iris/infer", False, False),
        ("POST", "/livez", False, False),
        ("OPTIONS", "/predict", False, False),
        ("GET", "/predict", False, False),
        ("GET", "/nowhere", False, False),
        ("GET", "/metrics/", False, False),
    ],
)
def test_only_reads_of_a_few_exact_paths_are_public(method, path, protect_all, public):
    assert Guard(_app, Settings(protect_all=protect_all)).public(method, path, {}) is public


def test_cors_preflights_are_public():
    guard = Guard(_app, Settings(protect_all=True))
    assert guard.public("OPTIONS", "/predict", {"access-control-request-method": "POST"})
    assert not guard.public("POST", "/predict", {"access-control-request-method": "POST"})


@pytest.mark.parametrize(
    "path", ["/predict\n", "/predict\r\n", "/pre\x00dict", "/\tpredict", "/x\x7f"]
)
def test_control_characters_in_the_path_are_refused_first(keyed, path):
    status, _, body = call(keyed(), "POST", path)
    assert status == 400 and body["detail"][0]["type"] == "bad_path"


def test_control_bytes_in_the_raw_path_are_refused(keyed):
    status, _, body = call(keyed(), "GET", "/livez", raw_path=b"/livez\n")
    assert status == 400 and body["detail"][0]["type"] == "bad_path"


def test_unknown_paths_and_methods_get_the_whole_guard(keyed):
    guard = keyed(rate_limit=1, rate_burst=1)
    guard.buckets.now = Clock()  # frozen: the second request finds the bucket empty
    assert call(guard, "GET", "/nowhere")[0] == 401
    ok = [("x-api-key", KEY)]
    assert call(guard, "DELETE", "/nowhere", ok)[0] == 200
    assert call(guard, "DELETE", "/nowhere", ok)[0] == 429  # rate-limited like /predict
    text = [("x-api-key", KEY), ("content-type", "text/plain"), ("content-length", "2")]
    assert call(keyed(), "PUT", "/nowhere", text)[0] == 415


def test_failed_authentications_are_limited_per_client(keyed):
    clock = Clock()
    guard = keyed(auth_failures_per_minute=3)
    guard.failures.now = clock
    wrong = [("x-api-key", "guess")]
    assert [call(guard, "POST", "/predict", wrong)[0] for _ in range(3)] == [401] * 3
    status, hdrs, body = call(guard, "POST", "/predict", [("authorization", f"Bearer {KEY}")])
    assert status == 429 and body["detail"][0]["type"] == "auth_limited"
    assert hdrs["retry-after"] == "20"  # three a minute: one back every 20 s
    assert call(guard, "POST", "/predict", [("x-api-key", KEY)], client="10.0.0.2")[0] == 200
    assert call(guard, "POST", "/predict", client="10.0.0.3")[0] == 401  # no key: not a guess
    assert call(guard, "POST", "/predict", client="10.0.0.3")[0] == 401
    clock.t += 20
    assert call(guard, "POST", "/predict", [("x-api-key", KEY)])[0] == 200
    assert call(guard, "POST", "/predict", wrong)[0] == 401
    assert call(guard, "POST", "/predict", wrong)[0] == 429


def test_failed_authentications_unlimited_when_switched_off(keyed):
    guard = keyed(auth_failures_per_minute=0)
    assert {call(guard, "POST", "/predict", [("x-api-key", "g")])[0] for _ in range(20)} == {401}


def _handshake(extensions: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "extensions": extensions}
    asyncio.run(Guard(_app, Settings(protect_all=True))(scope, receive, send))
    return sent


def test_websocket_handshakes_are_refused():
    sent = _handshake({"websocket.http.response": {}})
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["detail"][0]["type"] == "websocket"
    assert _handshake({}) == [{"type": "websocket.close", "code": 1008}]  # no denial responses


@pytest.mark.parametrize(
    ("proxies", "peer", "client"),
    [
        ("", "127.0.0.1", "127.0.0.1"),  # uvicorn's default would trust 127.0.0.1
        ("10.0.0.9", "127.0.0.1", "127.0.0.1"),
        (" 10.0.0.9 , 127.0.0.1 ", "127.0.0.1", "198.51.100.7"),
    ],
)
def test_uvicorn_believes_forwarded_headers_only_from_named_proxies(
    monkeypatch, proxies, peer, client
):
    from uvicorn.config import Config
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    trust_forwarded(proxies)
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["client"][0])

    trusted = Config(app).forwarded_allow_ips  # what BentoML's worker builds uvicorn with
    scope = {
        "type": "http",
        "client": (peer, 1),
        "headers": [(b"x-forwarded-for", b"198.51.100.7")],
    }
    asyncio.run(ProxyHeadersMiddleware(app, trusted)(scope, None, None))
    assert seen == [client]


@pytest.mark.parametrize(
    ("wait", "header"),
    [
        (0.0, "1"),
        (0.2, "1"),
        (1.5, "2"),
        (3600.0, "3600"),
        (1e300, str(MAX_RETRY_AFTER)),
        (math.inf, str(MAX_RETRY_AFTER)),
        (math.nan, str(MAX_RETRY_AFTER)),
    ],
)
def test_retry_after_is_whole_seconds_and_capped(wait, header):
    assert retry_after(wait) == {"retry-after": header}


def test_a_near_empty_bucket_gets_a_capped_retry_after(keyed):
    """A rate so small its wait overflows (1e-320/s; the settings refuse it now) still answers 429."""
    guard = keyed()
    guard.buckets = TokenBuckets(1e-320, 1, now=Clock())
    auth = [("x-api-key", KEY)]
    assert call(guard, "POST", "/predict", auth)[0] == 200
    status, hdrs, body = call(guard, "POST", "/predict", auth)
    assert status == 429 and hdrs["retry-after"] == "3600" and body["error"]


@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", "Bearer wrong"), ("authorization", f"Bearer {KEY}")],
        [("x-api-key", "wrong"), ("x-api-key", KEY)],
        [("x-api-key", KEY), ("content-type", "text/plain"), ("content-type", "application/json")],
        [("x-api-key", KEY), ("content-length", "2"), ("content-length", "2")],
    ],
    ids=["authorization", "x-api-key", "content-type", "content-length"],
)
def test_repeated_security_headers_refused(keyed, headers):
    status, hdrs, body = call(keyed(), "POST", "/predict", headers)
    assert status == 400 and body["detail"][0]["type"] == "malformed"
    assert "header is repeated" in body["error"] and hdrs["x-request-id"]


def test_non_ascii_key_bytes_compared_as_sent(keyed):
    """The guard compares the header's bytes: a latin-1 byte never matches an ASCII key."""
    status, _, _ = call(keyed(), "POST", "/predict", [("x-api-key", KEY + "\u00e9")])
    assert status == 401


@pytest.mark.parametrize(
    "path, ctype, accepted",
    [
        ("/predict", "application/json", True),
        ("/predict", "text/csv; charset=utf-8", True),
        ("/predict", "", True),
        ("/predict", "application/octet-stream", False),
        ("/v2/models/m/infer", "application/octet-stream", True),
        ("/v2/models/m/versions/3/infer", "application/json", True),
        ("/v2/models/m/infer", "text/csv", False),
        ("/v2/repository/index", "application/octet-stream", False),
        ("/anything", "text/plain", False),
    ],
)
def test_each_route_takes_only_its_own_body_types(keyed, path, ctype, accepted):
    refusal = keyed().check_body_headers({"content-type": ctype}, path)
    assert (refusal is None) is accepted
    if not accepted:
        status, reason, message, _ = refusal
        assert (status, reason) == (415, "content_type") and "application/json" in message
