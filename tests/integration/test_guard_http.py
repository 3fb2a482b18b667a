"""The guard over real HTTP: path spellings, websockets, key guessing, forwarded headers, slow readers."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import iris_env, running_server

ROW = [5.1, 3.5, 1.4, 0.2]
KEY = "s3cret-key"
PREDICT = json.dumps({"inputs": [ROW]}).encode()
V2 = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
).encode()


def raw(
    url: str,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    more: tuple[tuple[str, str], ...] = (),
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection, the target sent exactly as given (no client normalising);
    `more`: header lines sent after the others, repeats included."""
    host, port = url.removeprefix("http://").split(":")
    fields = {"host": f"{host}:{port}", "connection": "close"}
    if body or method not in ("GET", "HEAD"):
        fields |= {"content-type": "application/json", "content-length": str(len(body))}
    fields |= headers or {}
    head = "".join(f"{k}: {v}\r\n" for k, v in [*fields.items(), *more])
    with socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0)) as s:
        with contextlib.suppress(OSError):  # a refusal may close the connection mid-body
            s.sendall(f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode() + body)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(1 << 16):
                data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), hdrs, rest


def series(url: str, source: str = "127.0.0.1", key: str | None = None) -> set[tuple]:
    """Every sample on /metrics as (name, labels)."""
    _, _, body = raw(
        url, "GET", "/metrics", headers={"x-api-key": key} if key else {}, source=source
    )
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }


def value(
    url: str, name: str, source: str = "127.0.0.1", key: str | None = None, **labels
) -> float:
    _, _, body = raw(
        url, "GET", "/metrics", headers={"x-api-key": key} if key else {}, source=source
    )
    return sum(
        s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def keyed(iris_package):
    """A keyed server allowing three failed authentications a minute per client (tests act as
    separate clients through their own 127.0.0.x source addresses)."""
    env = iris_env(iris_package, auth_failures_per_minute="3")
    with running_server({**env, "NNSHIP_API_KEY": KEY}) as (url, _):
        yield url


# spellings that are the canonical routes once decoded: the key is needed, and with it they infer
CANONICAL = [
    "/predict",
    "/predict?x=1",
    "/%70redict",
    "/v2/models/iris-served/infer",
    "/v2/models/iris-served/infer?x=1",
    "/v2/models/iris-served%2Finfer",
    "/v2/models/iris-served/versions/{version}/infer",
]
# control characters anywhere in the path: 400 before anything else, key or not
CONTROL = [
    "/predict%0A",
    "/predict%0D%0A",
    "/predict%00",
    "/predict%09",
    "/predict%7F",
    "/predict%0Ax",
    "/%0A/predict",
    "/v2/models/iris-served/infer%0A",
    "/v2/models/iris-served%0A/infer",
]
# everything else that looks like a prediction route: the key is needed, and even with it no inference
OTHER = [
    "/predict/",
    "/predict%2F",
    "//predict",
    "/./predict",
    "/predict/.",
    "/predict/../predict",
    "/x/../predict",
    "/%2Fpredict",
    "/%2E/predict",
    "/PREDICT",
    "/Predict",
    "/predict;x",
    "/predict%3Bx",
    "/predict%20",
    "/predict.json",
    "/predict/?x=1",
    "/v2//models/iris-served/infer",
    "/v2/models//iris-served/infer",
    "/v2/models/iris-served/infer/",
    "/v2/models/iris-served/./infer",
    "/v2/models/iris-served/INFER",
    "/v2/models/iris-served/infer;x",
    "/V2/models/iris-served/infer",
    "/v2/models/./infer",
    "/v2/models/iris-served/versions/x/infer",
    "/nowhere",
]


def _target(spelling: str, version: str) -> tuple[str, bytes]:
    return spelling.format(version=version), V2 if "v2" in spelling.lower() else PREDICT


def _inferences(url: str) -> float:
    return value(url, "nnship_batch_size_count")


@pytest.mark.parametrize("spelling", CANONICAL + CONTROL + OTHER)
def test_no_spelling_reaches_the_model_without_the_key(keyed, iris_package, spelling):
    target, body = _target(spelling, iris_package["version"])
    before = _inferences(keyed)
    status, _, answer = raw(keyed, "POST", target, body)
    assert status != 200 and status < 500, (status, answer[:300])
    if spelling in CONTROL:
        assert status == 400 and json.loads(answer)["detail"][0]["type"] == "bad_path"
    else:
        assert status == 401 and json.loads(answer)["detail"][0]["type"] == "unauthorized"
    assert _inferences(keyed) == before


@pytest.mark.parametrize("spelling", CANONICAL + CONTROL + OTHER)
def test_with_the_key_only_canonical_spellings_infer(keyed, iris_package, spelling):
    target, body = _target(spelling, iris_package["version"])
    status, _, answer = raw(keyed, "POST", target, body, {"x-api-key": KEY})
    if spelling in CANONICAL:
        assert status == 200, answer[:300]
        assert b'"predictions"' in answer or b'"outputs"' in answer
        return
    assert status < 500 and b'"predictions"' not in answer and b'"outputs"' not in answer
    if spelling in CONTROL:
        assert status == 400 and json.loads(answer)["detail"][0]["type"] == "bad_path"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "GET", "OPTIONS"])
def test_other_methods_on_the_predict_route_need_the_key(keyed, method):
    status, _, _ = raw(keyed, method, "/predict", PREDICT)
    assert status == 401


def test_control_characters_refused_with_an_oversized_text_body(keyed):
    """The reported request: an 8 MiB text/plain body to `/predict%0A`, with no key."""
    text = {"content-type": "text/plain"}
    status, _, answer = raw(keyed, "POST", "/predict%0A", b"x" * (8 << 20), text)
    assert status == 400 and json.loads(answer)["detail"][0]["type"] == "bad_path"


@pytest.mark.parametrize(
    "path",
    [
        "/livez",
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs.json",
        "/",
        "/static_content/index.css",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/iris-served",
        "/v2/models/iris-served/ready",
    ],
)
def test_health_metrics_and_docs_stay_open(keyed, path):
    assert raw(keyed, "GET", path)[0] == 200
    assert raw(keyed, "POST", path, b"{}")[0] == 401  # only reads are public


def _handshake(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    key = base64.b64encode(os.urandom(16)).decode()
    status, _, body = raw(
        url,
        "GET",
        path,
        headers={
            "upgrade": "websocket",
            "connection": "Upgrade",
            "sec-websocket-key": key,
            "sec-websocket-version": "13",
            **(headers or {}),
        },
    )
    return status, body


# fresh clients: reads stay under rate limits
READERS = (f"127.0.1.{i}" for i in itertools.count(1))


def _websockets_refused_without_new_series(url: str, key: str | None = None) -> None:
    _handshake(url, "/warm-up")
    before = series(url, next(READERS), key)
    rejected = value(url, "nnship_requests_rejected_total", next(READERS), key, reason="websocket")
    for i in range(20):
        status, body = _handshake(url, f"/ws-made-up-{i}", {"x-api-key": key} if key else None)
        assert status == 400 and json.loads(body)["detail"][0]["type"] == "websocket", status
    for path in ("/predict", "/v2/models/iris-served/infer", "/metrics"):
        assert _handshake(url, path)[0] == 400
    added = series(url, next(READERS), key) - before
    assert not [s for s in added if "ws-made-up" in str(s)], added
    assert len(added) == 0, added
    after = value(url, "nnship_requests_rejected_total", next(READERS), key, reason="websocket")
    assert after - rejected == 23


def test_websocket_handshakes_are_refused_and_leave_no_series(keyed):
    _websockets_refused_without_new_series(keyed)


def test_wrong_keys_are_limited_per_client(keyed):
    """Three failed authentications a minute (this server's setting): the fourth guess gets 429,
    even with the right key, for that client only."""
    guesser = "127.0.0.2"
    codes = [
        raw(keyed, "POST", "/predict", PREDICT, {"x-api-key": f"guess-{i}"}, source=guesser)[0]
        for i in range(6)
    ]
    assert codes == [401, 401, 401, 429, 429, 429]
    status, hdrs, body = raw(keyed, "POST", "/predict", PREDICT, {"x-api-key": KEY}, guesser)
    assert status == 429 and int(hdrs["retry-after"]) >= 1
    assert json.loads(body)["detail"][0]["type"] == "auth_limited"
    bearer = {"authorization": "Bearer guess"}
    assert raw(keyed, "POST", "/predict", PREDICT, bearer, source=guesser)[0] == 429
    # another client is unaffected, and a missing key is not a guess
    assert raw(keyed, "POST", "/predict", PREDICT, {"x-api-key": KEY}, source="127.0.0.3")[0] == 200
    assert [raw(keyed, "POST", "/predict", PREDICT, source="127.0.0.4")[0] for _ in range(5)] == [
        401
    ] * 5


@pytest.mark.parametrize(
    ("source", "headers", "more"),
    [
        ("127.0.0.5", {"authorization": "Bearer wrong"}, [("authorization", f"Bearer {KEY}")]),
        ("127.0.0.6", {"x-api-key": "wrong"}, [("x-api-key", KEY)]),
        (
            "127.0.0.7",
            {"x-api-key": KEY, "content-type": "text/plain"},
            [("content-type", "application/json")],
        ),
        ("127.0.0.7", {"x-api-key": KEY}, [("content-type", "application/json; charset=utf-16")]),
    ],
    ids=["authorization", "x-api-key", "content-type", "content-type-charset"],
)
def test_repeated_security_headers_refused(keyed, source, headers, more):
    """Repeated security headers: a wrong then a right key, text/plain then JSON. Each header the guard
    decides on must come once; before, the last copy won and these were answered 200."""
    status, hdrs, body = raw(keyed, "POST", "/predict", PREDICT, headers, source, tuple(more))
    answer = json.loads(body)
    assert status == 400 and answer["detail"][0]["type"] == "malformed", body[:300]
    assert "header is repeated" in answer["error"] and hdrs["x-request-id"] == answer["request_id"]


def test_docs_declare_the_api_key(keyed):
    """With a key configured, /docs.json says how to send it and which routes need it."""
    _, _, body = raw(keyed, "GET", "/docs.json")
    doc = json.loads(body)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    needed = [{"bearer": []}, {"apiKey": []}]
    assert doc["paths"]["/predict"]["post"]["security"] == needed
    assert doc["paths"]["/v2/models/{name}/infer"]["post"]["security"] == needed
    assert "security" not in doc["paths"]["/readyz"]["get"]  # open without NNSHIP_PROTECT_ALL


@pytest.fixture(scope="module")
def untrusted(iris_package):
    """A rate limit of 1/s (burst 2), the key on every route, default proxy trust (none)."""
    env = iris_env(iris_package, rate_limit="1", rate_burst="2", protect_all="true")
    with running_server({**env, "NNSHIP_API_KEY": KEY}, headers={"x-api-key": KEY}) as (url, _):
        yield url


def test_forwarded_headers_do_not_buy_fresh_buckets_by_default(untrusted):
    time.sleep(2.5)  # the readiness poll took a token from this client's bucket: let it refill
    codes = [
        raw(
            untrusted,
            "POST",
            "/predict",
            PREDICT,
            {"x-api-key": KEY, "x-forwarded-for": f"198.51.100.{i}"},
        )[0]
        for i in range(6)
    ]
    assert codes[:2] == [200, 200] and codes[2:] == [429] * 4, codes


def test_websockets_refused_first_with_protect_all(untrusted):
    _websockets_refused_without_new_series(untrusted, key=KEY)


@pytest.fixture(scope="module")
def behind_proxy(iris_package):
    """The same limit with 127.0.0.1 named as a trusted proxy."""
    env = iris_env(iris_package, rate_limit="1", rate_burst="2", trusted_proxies="127.0.0.1")
    with running_server(env) as (url, _):
        yield url


def test_trusted_proxy_names_the_client(behind_proxy):
    fresh = [
        raw(behind_proxy, "POST", "/predict", PREDICT, {"x-forwarded-for": f"198.51.100.{i}"})[0]
        for i in range(6)
    ]
    assert fresh == [200] * 6  # each forwarded client has its own bucket (documented behaviour)
    same = [
        raw(behind_proxy, "POST", "/predict", PREDICT, {"x-forwarded-for": "198.51.100.99"})[0]
        for _ in range(4)
    ]
    assert same[:2] == [200, 200] and same[2:] == [429, 429], same
    # a peer that is not the trusted proxy cannot choose its own client address
    other = [
        raw(
            behind_proxy,
            "POST",
            "/predict",
            PREDICT,
            {"x-forwarded-for": f"203.0.113.{i}"},
            source="127.0.0.5",
        )[0]
        for i in range(4)
    ]
    assert other[:2] == [200, 200] and other[2:] == [429, 429], other


ROWS = 40_000


@pytest.fixture(scope="module")
def small_slots(iris_package):
    """Two requests in flight at most, a 4 s timeout, and requests large enough for a ~2 MB answer."""
    env = iris_env(
        iris_package,
        max_concurrency="2",
        timeout_s="4",
        max_rows=str(ROWS),
        max_body_bytes=str(8 << 20),
    )
    with running_server(env) as (url, _):
        yield url


def _stalled_reader(url: str, requests: int = 3) -> socket.socket:
    """A client that pipelines large-answer requests and never reads the answers."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    body = json.dumps({"inputs": [ROW] * ROWS}).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    s.sendall((head + body) * requests)
    return s


def test_a_client_that_never_reads_cannot_hold_a_slot(small_slots):
    url = small_slots
    stalled = [_stalled_reader(url) for _ in range(2)]
    try:
        t0, held = time.monotonic(), False
        while time.monotonic() - t0 < 10 and not held:  # both slots taken by answers nobody reads
            held = raw(url, "POST", "/predict", PREDICT)[0] == 429
            time.sleep(0.1)
        assert held, "the stalled clients never filled the slots"
        freed = None
        while time.monotonic() - t0 < 25:
            if raw(url, "POST", "/predict", PREDICT)[0] == 200:
                freed = time.monotonic() - t0
                break
            time.sleep(0.2)
        assert freed is not None, "slots still held 25 s after the stalled clients sent"
    finally:
        for s in stalled:
            s.close()
    assert raw(url, "POST", "/predict", PREDICT)[0] == 200


def test_the_concurrency_limit_answers_in_the_error_shape(small_slots):
    """At the limit: 429 with Retry-After, the request id and `detail` (BentoML's own answer was
    `{"error": "Too many requests"}` with none of them)."""
    url = small_slots
    stalled = [_stalled_reader(url) for _ in range(2)]
    try:
        t0, answer = time.monotonic(), None
        while time.monotonic() - t0 < 10 and answer is None:
            status, hdrs, body = raw(url, "POST", "/predict", PREDICT, {"x-request-id": "rid-7"})
            answer = (hdrs, json.loads(body)) if status == 429 else None
            time.sleep(0.1)
    finally:
        for s in stalled:
            s.close()
    assert answer is not None, "the stalled clients never filled the slots"
    hdrs, body = answer
    assert hdrs["retry-after"] == "1" and hdrs["x-request-id"] == "rid-7"
    assert body["request_id"] == "rid-7" and body["detail"][0]["type"] == "concurrency_limited"
    assert value(url, "nnship_requests_rejected_total", reason="concurrency_limited") >= 1
