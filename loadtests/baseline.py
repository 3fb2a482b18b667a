"""The comparison servers: a bare ASGI ONNX Runtime app, a naive one on Starlette and an echo app.

    python -m nnship.loadtests.baseline {bare,naive,echo} PACKAGE_DIR_OR_TAG --port 3100 [--workers N] [--threads N]

- `bare`: the least a server can do per request: a raw ASGI callable (no framework, no batching)
  that reads the body, parses it with orjson, runs one ONNX Runtime call and answers
  predictions and probabilities as JSON. uvicorn serves it with the HTTP protocol class nnship's
  service uses (`nnship.service.connections.PROTOCOL`), so the comparison is the application
  layer's alone.
- `naive`: the same work on Starlette, with the standard library's json.
- `echo`: Starlette parsing the JSON and answering without inference (the HTTP layer's ceiling).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def naive_app(model: str, threads: int) -> Starlette:
    from nnship.numeric import softmax

    session, labels = _session(model, threads)

    async def predict(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        x = np.asarray(body["inputs"], dtype=np.float32)
        out = session.run(None, {"input": x})[0]
        p = softmax(out)
        return JSONResponse(
            {"predictions": [labels[i] for i in p.argmax(1)], "probabilities": p.tolist()}
        )

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def _session(model: str, threads: int):
    """The package's default variant in an ONNX Runtime session set up as the service sets its
    own (same intra-op threads, no spinning), and the class labels."""
    import onnxruntime as ort

    from nnship.onnxrt import CPU, session_options
    from nnship.package import load_package

    pkg = load_package(model)
    session = ort.InferenceSession(
        str(pkg.variant_path(pkg.manifest.default_variant)),
        session_options(threads, spin=False),
        providers=[CPU],
    )
    return session, pkg.manifest.output.labels


def bare_app(model: str, threads: int):
    """POST /predict as a raw ASGI callable: one ONNX Runtime call per request, nothing else."""
    import orjson

    from nnship.numeric import softmax

    session, labels = _session(model, threads)
    headers = [(b"content-type", b"application/json")]
    not_found = {"type": "http.response.start", "status": 404, "headers": headers}

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":  # uvicorn's start-up and shutdown: nothing to do
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if scope["path"] != "/predict" or scope["method"] != "POST":
            await send(not_found)
            await send({"type": "http.response.body", "body": b"{}"})
            return
        x = np.asarray(orjson.loads(b"".join(chunks))["inputs"], dtype=np.float32)
        p = softmax(session.run(None, {"input": x})[0])
        body = orjson.dumps(
            {"predictions": [labels[i] for i in p.argmax(1).tolist()], "probabilities": p},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def echo_app() -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        return JSONResponse({"predictions": [0] * len(body["inputs"])})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def app_from_env():
    """Factory for uvicorn workers: the kind and model come from the environment."""
    kind = os.environ["NNSHIP_BASELINE_KIND"]
    if kind == "echo":
        return echo_app()
    make = bare_app if kind == "bare" else naive_app
    return make(
        os.environ["NNSHIP_BASELINE_MODEL"], int(os.environ.get("NNSHIP_BASELINE_THREADS", "1"))
    )


def _tcp_sockets_for_workers() -> None:
    """Make the listening socket uvicorn binds for its worker processes say it is TCP.

    asyncio turns Nagle's algorithm off only on sockets whose protocol number is IPPROTO_TCP;
    uvicorn's own binding (used with --workers) leaves it 0, so every answer's second write (the
    body after the head) waited for the client's delayed ACK: 44 ms a request, 22 req/s at one
    client (measured). A single-worker uvicorn, and BentoML's workers, do not have the problem.
    """
    import socket

    from uvicorn.config import Config

    bind = Config.bind_socket

    def bind_tcp(self) -> socket.socket:
        sock = bind(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        return sock

    Config.bind_socket = bind_tcp


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["bare", "naive", "echo"])
    p.add_argument("model", nargs="?", default="")
    p.add_argument("--port", type=int, default=3100)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    args = p.parse_args()
    os.environ.update(
        NNSHIP_BASELINE_KIND=args.kind,
        NNSHIP_BASELINE_MODEL=args.model,
        NNSHIP_BASELINE_THREADS=str(max(1, args.threads // args.workers)),
    )
    from nnship.service.connections import PROTOCOL

    if args.workers > 1:
        _tcp_sockets_for_workers()
    uvicorn.run(
        "nnship.loadtests.baseline:app_from_env",
        factory=True,
        http=PROTOCOL,  # the protocol class nnship's service serves with
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
