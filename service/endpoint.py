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
ties a response to its span). The two routes differ only in the envelope: this one reads the body as
UTF-8 JSON holding `inputs` and nothing else and names the rule broken; BentoML's IO model ignores
unknown fields and words its own errors.
"""

from __future__ import annotations

from typing import Any

from nnship.service.oip import STATE


def _cors_enabled() -> bool:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return bool(BentoMLContainer.http.cors.enabled.get())


class PredictEndpoint:
    def __init__(self, app: Any, path: str = "/predict", enabled: bool = True) -> None:
        self.app = app
        self.path = path
        self.enabled = enabled and not _cors_enabled()

    async def __call__(self, scope, receive, send) -> None:
        svc = STATE.service  # published once the model is loaded and warmed up
        if (
            not self.enabled
            or svc is None
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != self.path
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:  # the guard in front has already held the body to its size limit
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        response = await svc.predict_json(b"".join(chunks))
        await response(scope, receive, send)
