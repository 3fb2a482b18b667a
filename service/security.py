"""An ASGI guard in front of the service's routes: request ids, API key, per-client rate limits,
content type, a body-size limit enforced while reading, rejection counting, and no stack traces out.

The guard denies by default: a request is public only when it reads (GET or HEAD) one of a few exact
paths (health, readiness, metrics, the docs, v2 health, model metadata and configuration). Every other request, in
any method and any spelling of any path (a 404, a redirect, a spelling the router still matches),
passes the whole guard (CORS preflights aside). Paths holding control characters are refused before
anything else: the router's patterns end in `$`, which also matches before a trailing newline, so
`/predict%0A` routes to /predict. Websocket handshakes are refused outright: the service has no
websocket route. POST /predict is checked by `service/fastlane.py` with this guard's own instance
and methods, in the same order, outside BentoML's stack.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from nnship.service import metrics
from nnship.service.settings import Settings
from nnship.service.validation import printable

log = logging.getLogger(__name__)

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
V2_METADATA = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?(?:/ready|/config)?")
V2_INFER = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")
# The body types each route reads; no header reads as JSON, as BentoML and Triton take it. v2 infer
# also takes the binary tensor extension's body (a JSON header then raw tensor bytes), which
# clients send as application/octet-stream or with no type; /predict also takes CSV with a header row.
JSON_TYPES = ("application/json", "")
BODY_TYPES = {
    "/predict": (*JSON_TYPES, "text/csv"),
    "v2-infer": (*JSON_TYPES, "application/octet-stream"),
    "/batch/submit": ("multipart/form-data",),  # a batch job's file, as BentoML's task takes it
}
JOB_UPLOADS = frozenset({"/batch/submit"})  # bodies held to max_job_bytes instead of max_body_bytes
READS = frozenset({"GET", "HEAD"})
ALWAYS_OPEN = frozenset({"/livez", "/healthz"})  # liveness probes, also with protect_all
OPEN = frozenset(
    {
        "/",
        "/readyz",
        "/metrics",
        "/docs.json",
        "/schema.json",
        "/v2",
        "/v2/",
        "/v2/health/live",
        "/v2/health/ready",
    }
)
MAX_CLIENTS = 10_000
MAX_RETRY_AFTER = 3600  # seconds; a longer wait is announced as this
# set for the handlers below
REQUEST_ID: ContextVar[str] = ContextVar("nnship_request_id", default="")
WANTED = frozenset(
    {
        b"x-request-id",
        b"authorization",
        b"x-api-key",
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"access-control-request-method",
    }
)
# headers the guard decides on: a repeated one is refused rather than one copy picked
SINGLE = frozenset({b"authorization", b"x-api-key", b"content-type", b"content-length"})
Refusal = tuple[int, str, str, dict[str, str]]  # status, reason, message, extra headers


class TokenBuckets:
    """Per-client token buckets in a bounded LRU (`rate` tokens per second, `burst` deep)."""

    def __init__(
        self, rate: float, burst: int = 0, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst = rate, burst or max(1, int(2 * rate))
        self.now = now
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, bucket: tuple[float, float], now: float) -> float:
        return min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)

    def take(self, client: str, now: float | None = None) -> float:
        """0 when a token was taken, else seconds until one is available (nothing taken)."""
        now = self.now() if now is None else now
        tokens = self._level(self._buckets.pop(client, (float(self.burst), now)), now)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait

    def wait(self, client: str, now: float | None = None) -> float:
        """Seconds until `client` has a token (0: it has one now); takes nothing."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return 0.0
        tokens = self._level(bucket, self.now() if now is None else now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


def trust_forwarded(proxies: str) -> None:
    """Let uvicorn believe X-Forwarded-For only from these proxy addresses (none when empty).

    uvicorn trusts 127.0.0.1 unless told otherwise, and rewrites the client address from the header,
    so every made-up header would buy a fresh rate-limit bucket. BentoML's worker builds uvicorn's
    config from FORWARDED_ALLOW_IPS after it has imported the service: set at import, it holds.
    """
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(p.strip() for p in proxies.split(",") if p.strip())


def retry_after(wait: float) -> dict[str, str]:
    """The Retry-After header for a wait in seconds: whole seconds from 1 to MAX_RETRY_AFTER."""
    seconds = math.ceil(wait) if wait < MAX_RETRY_AFTER else MAX_RETRY_AFTER  # inf and NaN: cap
    return {"retry-after": str(max(1, seconds))}


def _static_paths() -> frozenset[str]:
    """The docs page's own assets, served from BentoML's static folder."""
    from bentoml._internal import server

    folder = Path(server.__file__).parent / "static_content"
    return frozenset(f"/static_content/{p.name}" for p in folder.iterdir() if p.is_file())


def error_body(reason: str, message: str, rid: str) -> bytes:
    return json.dumps(
        {
            "error": message,
            "detail": [{"loc": [], "type": reason, "msg": message}],
            "request_id": rid,
        }
    ).encode()


def _presented_key(headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key", "")


async def refuse_websocket(scope, send) -> None:
    """Refuse a websocket handshake with 400 (403 where the server cannot send a body)."""
    metrics.reject("websocket")
    rid = os.urandom(12).hex()
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = error_body("websocket", "websocket upgrades are not served here", rid)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode()),
    ]
    await send({"type": "websocket.http.response.start", "status": 400, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


def read_headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], str]:
    """The headers the guard decides on, and the name of one sent more than once ("" if none)."""
    headers: dict[str, str] = {}
    repeated = ""
    for k, v in raw:  # ASGI servers lower-case header names
        if k in WANTED:
            name = k.decode()
            if k in SINGLE and name in headers:
                repeated = name
            headers[name] = v.decode("latin-1")
    return headers, repeated


def request_id(headers: dict[str, str]) -> str:
    """The client's x-request-id when well formed, else a fresh random one."""
    rid = headers.get("x-request-id", "")
    return rid if REQUEST_ID_RE.fullmatch(rid) else os.urandom(12).hex()


def body_types(path: str) -> tuple[str, ...]:
    """The content types a route's body may have (JSON only, unless BODY_TYPES says more)."""
    if path in BODY_TYPES:
        return BODY_TYPES[path]
    return BODY_TYPES["v2-infer"] if V2_INFER.fullmatch(path) else JSON_TYPES


def check_path(scope) -> Refusal | None:
    """400 for a path holding control characters (decoded or raw)."""
    if CONTROL.search(scope["path"]) or CONTROL_BYTES.search(scope.get("raw_path") or b""):
        return 400, "bad_path", "the request path holds control characters", {}
    return None


def check_repeated(repeated: str) -> Refusal | None:
    """400 for a decisive header sent more than once."""
    if repeated:
        return 400, "malformed", f"the {repeated} header is repeated; send it once", {}
    return None


def with_request_id(scope, rid: str):
    """The scope with exactly one x-request-id header: the checked one."""
    kept = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
    return {**scope, "headers": [*kept, (b"x-request-id", rid.encode())]}


def has_body(headers: dict[str, str]) -> bool:
    """Whether the request declares a body (a non-zero length, or chunked)."""
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class Guard:
    """Request id, path check, repeated headers, public routes, key, auth-failure and rate limits,
    content type and body limit, in that order, then the app with a JSON 500 for what it raises."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.key = settings.api_key().encode()
        self.open = OPEN | _static_paths()
        self.buckets = (
            TokenBuckets(settings.rate_limit, settings.rate_burst)
            if settings.rate_limit > 0
            else None
        )
        n = settings.auth_failures_per_minute
        self.failures = TokenBuckets(n / 60, n) if n > 0 else None

    def public(self, method: str, path: str, headers: dict[str, str]) -> bool:
        """Only reads of health, readiness, metrics, docs and v2 metadata skip the guard, and CORS
        preflights (browsers never send credentials with them; no route infers on OPTIONS)."""
        if method not in READS:
            return method == "OPTIONS" and "access-control-request-method" in headers
        if path in ALWAYS_OPEN:
            return True
        if self.settings.protect_all:
            return False
        return path in self.open or V2_METADATA.fullmatch(path) is not None

    def authenticate(self, addr: str, headers: dict[str, str]) -> Refusal | None:
        """The key, unless this client has failed too often lately (then not even compared)."""
        return self.limit_auth_failures(addr) or self.check_key(addr, headers)

    def limit_auth_failures(self, addr: str) -> Refusal | None:
        """429 for a client whose wrong keys used up its auth-failure bucket."""
        if self.failures is None or (wait := self.failures.wait(addr)) == 0:
            return None
        return (
            429,
            "auth_limited",
            "too many failed authentications; retry later",
            retry_after(wait),
        )

    def check_key(self, addr: str, headers: dict[str, str]) -> Refusal | None:
        """401 unless the presented key matches (constant time); a wrong one counts as a guess."""
        given = _presented_key(headers)
        if hmac.compare_digest(given.encode("latin-1"), self.key):  # the header's own bytes
            return None
        if given and self.failures is not None:  # a wrong key is a guess; a missing one is not
            self.failures.take(addr)
        return (
            401,
            "unauthorized",
            "missing or wrong API key",
            {"www-authenticate": 'Bearer realm="nnship"'},
        )

    def limit_rate(self, addr: str) -> Refusal | None:
        """429 for a client past its request rate."""
        if self.buckets is None or (wait := self.buckets.take(addr)) == 0:
            return None
        return 429, "rate_limited", "rate limit exceeded", retry_after(wait)

    def check_body_headers(self, headers: dict[str, str], path: str = "") -> Refusal | None:
        """Content type (by route, see BODY_TYPES) and declared length of a request with a body."""
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        accepted = body_types(path)
        if ctype not in accepted:
            named = " or ".join(t for t in accepted if t)
            message = f"content type {printable(ctype, 64)!r} is not accepted here; send {named}"
            return 415, "content_type", message, {}
        declared = headers.get("content-length")
        limit = self.body_limit(path)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return 413, "body_too_large", f"request body over the {limit}-byte limit", {}
        return None

    async def _reply(self, send, refusal: Refusal, rid: str) -> None:
        status, reason, message, extra = refusal
        metrics.reject(reason)
        body = error_body(reason, message, rid)
        hdrs = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ]
        hdrs += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    def body_limit(self, path: str) -> int:
        """The body limit of a route: max_job_bytes for batch job uploads, else max_body_bytes."""
        s = self.settings
        return s.max_job_bytes if path in JOB_UPLOADS else s.max_body_bytes

    async def _read_body(self, receive, send, rid: str, limit: int) -> bytes | None:
        """The whole body, read to at most the limit whatever the client claims (None: answered)."""
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                message = f"request body over the {limit}-byte limit"
                await self._reply(send, (413, "body_too_large", message, {}), rid)
                return None
        return bytes(body)

    async def __call__(self, scope, receive, send) -> None:
        """Each HTTP request through the steps below, in this order; websockets are refused."""
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        headers, repeated = read_headers(scope["headers"])
        rid = request_id(headers)
        refusal = check_path(scope) or check_repeated(repeated)
        guarded = with_body = False
        if refusal is None:
            scope = with_request_id(scope, rid)
            guarded = not self.public(scope["method"], scope["path"], headers)
            with_body = guarded and has_body(headers)
        if refusal is None and guarded:
            addr = (scope.get("client") or ("-",))[0]
            refusal = self.admit(addr, headers, with_body, scope["path"])
        if refusal is not None:
            await self._reply(send, refusal, rid)
            return
        if with_body:
            body = await self._read_body(receive, send, rid, self.body_limit(scope["path"]))
            if body is None:
                return
            receive = replay_body(body, receive)
        await self._forward(scope, receive, send, rid, with_body)

    async def _not_http(self, scope, receive, send) -> None:
        """Websocket handshakes refused; lifespan and other scopes passed to the app."""
        if scope["type"] == "websocket":
            await refuse_websocket(scope, send)
        else:
            await self.app(scope, receive, send)

    def admit(
        self, addr: str, headers: dict[str, str], with_body: bool, path: str = ""
    ) -> Refusal | None:
        """A guarded request's checks before its body: key, rate limit, content type and length."""
        refusal = self.authenticate(addr, headers) if self.key else None
        if refusal is None:
            refusal = self.limit_rate(addr)
        if refusal is None and with_body:
            refusal = self.check_body_headers(headers, path)
        return refusal

    async def _forward(self, scope, receive, send, rid: str, with_body: bool) -> None:
        """The app, with the request id on its answer and a JSON 500 for what it raises."""
        started = False

        async def send_wrapper(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", []))
                reason = next((v.decode() for k, v in hdrs if k == b"x-nnship-reject"), None)
                if reason is not None:
                    metrics.reject(reason)
                elif with_body and message["status"] == 400:
                    metrics.reject("malformed")  # BentoML's own parser refused the body
                if not any(k == b"x-request-id" for k, _ in hdrs):
                    hdrs.append((b"x-request-id", rid.encode()))
                await send({**message, "headers": hdrs})
                started = True  # only once it really went out: the 500 fallback stays possible
                return
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception(
                "request %s %s failed (request id %s)", scope["method"], scope["path"], rid
            )
            if not started:
                body = json.dumps({"error": "internal error", "request_id": rid}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"x-request-id", rid.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            REQUEST_ID.reset(token)


def replay_body(body: bytes, receive):
    """A receive that hands the app the body already read, then the client's next messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
