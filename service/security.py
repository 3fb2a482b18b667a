"""An ASGI guard in front of the service's routes: request ids, API key, per-client rate limit,
content type, a body-size limit enforced while reading, rejection counting, and no stack traces out."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from collections import OrderedDict
from contextvars import ContextVar

from service import metrics
from service.settings import Settings

log = logging.getLogger(__name__)

INFER_RE = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_CLIENTS = 10_000
REQUEST_ID: ContextVar[str] = ContextVar(
    "nnship_request_id", default=""
)  # set for the handlers below
WANTED = frozenset(
    {b"x-request-id", b"authorization", b"x-api-key", b"content-type", b"content-length"}
)


def is_inference(method: str, path: str) -> bool:
    return method == "POST" and (path == "/predict" or bool(INFER_RE.match(path)))


class TokenBuckets:
    """Per-client token buckets in a bounded LRU (rate tokens per second, `burst` deep)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst or max(1, int(2 * rate))
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> float:
        """0 when allowed, else seconds until a token is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


class Guard:
    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings
        self.key = settings.api_key().encode()
        self.buckets = (
            TokenBuckets(settings.rate_limit, settings.rate_burst)
            if settings.rate_limit > 0
            else None
        )

    async def _reply(
        self,
        send,
        status: int,
        reason: str,
        message: str,
        rid: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        metrics.reject(reason)
        body = json.dumps(
            {
                "error": message,
                "detail": [{"loc": [], "type": reason, "msg": message}],
                "request_id": rid,
            }
        ).encode()
        hdrs = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ]
        hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", ()):  # ASGI servers lower-case header names
            if k in WANTED:
                headers[k.decode()] = v.decode("latin-1")
        rid = headers.get("x-request-id", "")
        if not REQUEST_ID_RE.fullmatch(rid):
            rid = os.urandom(12).hex()
        # exactly one x-request-id reaches the app: the checked one
        kept = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        scope = {**scope, "headers": [*kept, (b"x-request-id", rid.encode())]}
        method, path = scope["method"], scope["path"]
        infer = is_inference(method, path)
        if self.key and (
            infer or (self.settings.protect_all and path not in ("/livez", "/healthz"))
        ):
            given = headers.get("x-api-key", "")
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), self.key):
                await self._reply(
                    send,
                    401,
                    "unauthorized",
                    "missing or wrong API key",
                    rid,
                    {"www-authenticate": 'Bearer realm="nnship"'},
                )
                return
        if infer and self.buckets is not None:
            # the address, plus the key once verified: a made-up key header must not buy a fresh bucket
            addr = (scope.get("client") or ("-",))[0]
            client = f"{addr}|{given}" if self.key else addr
            wait = self.buckets.take(hashlib.sha256(client.encode()).hexdigest())
            if wait > 0:
                await self._reply(
                    send,
                    429,
                    "rate_limited",
                    "rate limit exceeded",
                    rid,
                    {"retry-after": str(max(1, math.ceil(wait)))},
                )
                return
        if infer:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in (
                "application/json",
                "",
            ):  # no header: JSON, as BentoML and Triton take it
                await self._reply(
                    send,
                    415,
                    "content_type",
                    f"content type {ctype!r} is not accepted; send application/json",
                    rid,
                )
                return
            declared = headers.get("content-length")
            limit = self.settings.max_body_bytes
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await self._reply(
                    send, 413, "body_too_large", f"request body over the {limit}-byte limit", rid
                )
                return
            body, more = bytearray(), True
            while more:  # read at most `limit` bytes, whatever the client claims
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await self._reply(
                        send,
                        413,
                        "body_too_large",
                        f"request body over the {limit}-byte limit",
                        rid,
                    )
                    return
            receive = _replay(bytes(body), receive)

        started = False

        async def send_wrapper(message):
            nonlocal started
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", []))
                reason = next((v.decode() for k, v in hdrs if k == b"x-nnship-reject"), None)
                if reason is not None:
                    metrics.reject(reason)
                elif infer and message["status"] == 400:
                    metrics.reject("malformed")  # BentoML's own parser refused the body
                if not any(k == b"x-request-id" for k, _ in hdrs):
                    hdrs.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": hdrs}
                await send(message)
                started = (
                    True  # only once it really went out: the 500 fallback below stays possible
                )
                return
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("request %s %s failed (request id %s)", method, path, rid)
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


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
