"""The comparison servers: a naive ONNX Runtime app (one inference per request) and an echo app,
both on the same uvicorn + Starlette stack.

    python -m nnship.loadtests.baseline {naive,echo} PACKAGE_DIR_OR_TAG --port 3100 [--workers N] [--threads N]
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
    import onnxruntime as ort

    from nnship.numeric import softmax
    from nnship.onnxrt import CPU, session_options
    from nnship.package import load_package

    pkg = load_package(model)
    # the session settings the service uses: same threads, no spinning
    session = ort.InferenceSession(
        str(pkg.variant_path(pkg.manifest.default_variant)),
        session_options(threads, spin=False),
        providers=[CPU],
    )
    labels = pkg.manifest.output.labels

    async def predict(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        x = np.asarray(body["inputs"], dtype=np.float32)
        out = session.run(None, {"input": x})[0]
        p = softmax(out)
        return JSONResponse(
            {"predictions": [labels[i] for i in p.argmax(1)], "probabilities": p.tolist()}
        )

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def echo_app() -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        return JSONResponse({"predictions": [0] * len(body["inputs"])})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def app_from_env() -> Starlette:
    """Factory for uvicorn workers: the kind and model come from the environment."""
    kind = os.environ["NNSHIP_BASELINE_KIND"]
    if kind == "echo":
        return echo_app()
    return naive_app(
        os.environ["NNSHIP_BASELINE_MODEL"], int(os.environ.get("NNSHIP_BASELINE_THREADS", "1"))
    )


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["naive", "echo"])
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
    uvicorn.run(
        "nnship.loadtests.baseline:app_from_env",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
