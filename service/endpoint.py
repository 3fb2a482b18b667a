"""POST /predict answered at the ASGI layer, in front of BentoML's router.

Under load, a small model spends most of each request in the layers between the socket and the
handler, not in inference. On the digits CNN at 64 clients, one worker (loadtests/benchmark.py,
three runs), a /predict through BentoML's API layer (exception middleware, router, the per-API
wrapper, its request context and IO model) cost 610-825 µs of server CPU; answered here, 384-483 µs,
against 317-444 µs for a bare uvicorn app doing one ONNX Runtime call per request. The request still
passes everything in front of this endpoint: BentoML's traffic metrics, concurrency limit and
timeout, and nnship's guard (request id, API key, rate limit, content type, body limit).

The contract is the one BentoML publishes for its `predict` API in the OpenAPI document
(`{"inputs": [...]}` in, the answer object out). That API stays declared and is what answers when
NNSHIP_PREDICT_ROUTE=bentoml, when BentoML's CORS handling is on (it sits behind this layer and must
see the request) and when tracing is on (BentoML's layer adds the `x-bentoml-request-id` header that
ties a response to its span). Both routes refuse a bad body alike: when BentoML's layer answers, this
one still reads the body and checks it with the same validator first (unknown fields, a missing
`inputs`, wrong types and shapes get the same status and body on either route), so BentoML's IO model
only ever sees valid requests. Records keyed by feature name and text/csv bodies, which BentoML's IO
model does not read, reach its route as the positional JSON rows they hold. With BentoML's CORS handling on, a refusal made here is passed through
Starlette's CORS middleware with BentoML's own CORS options, so it carries the headers BentoML's route
would have added.

Not a replacement inside BentoML: it is added with the service's `add_asgi_middleware`, so it sits
behind BentoML's own middleware and in front of its router (tests/unit/test_patches.py checks it).
In the default configuration a POST /predict does not get this far: `service/fastlane.py`, outside
BentoML's stack, does the work of the layers in front of this one and answers it with the same
service methods; this endpoint answers when that lane stands aside (the access log on, or any
other layer in front that it does not stand in for).
"""

from __future__ import annotations

from typing import Any

from nnship.service.oip import STATE
from nnship.service.security import replay_body


def _cors_options() -> dict[str, Any] | None:
    """BentoML's CORS options when its CORS handling is on, else None."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    if not BentoMLContainer.http.cors.enabled.get():
        return None
    return dict(BentoMLContainer.access_control_options.get())


class PredictEndpoint:
    """POST /predict answered here (`enabled`), or checked here and answered by BentoML's route."""

    def __init__(self, app: Any, path: str = "/predict", enabled: bool = True) -> None:
        self.app = app
        self.path = path
        self.cors = _cors_options()  # CORS: BentoML answers, its CORS layer sits behind this one
        self.enabled = enabled and self.cors is None

    async def __call__(self, scope, receive, send) -> None:
        svc = STATE.service  # published once the model is loaded and warmed up
        if (
            svc is None
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != self.path
        ):
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        if raw is None:
            return
        csv_body = is_csv(scope)
        if self.enabled:
            response = await svc.predict_json(raw, csv_body)
        else:
            checked = svc.route_predict_body(raw, csv_body)
            if isinstance(checked, bytes):
                if checked is not raw:  # records or CSV, passed on as the positional rows they hold
                    scope = _as_json(scope, len(checked))
                await self.app(scope, replay_body(checked, receive), send)
                return
            response = checked
            if self.cors is not None:
                from starlette.middleware.cors import CORSMiddleware

                response = CORSMiddleware(response, **self.cors)
        await response(scope, receive, send)


def is_csv(scope) -> bool:
    """Whether the body is declared text/csv (the guard in front let only one content type in)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"text/csv"
    return False


def _as_json(scope, length: int) -> dict[str, Any]:
    """The scope of a request whose body is replaced by `length` bytes of JSON."""
    headers = [
        (name, value)
        for name, value in scope["headers"]
        if name not in (b"content-type", b"content-length")
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % length)]
    return {**scope, "headers": headers}


async def read_body(receive) -> bytes | None:
    """The whole body (None: the client left); the guard in front has held it to its size limit."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
