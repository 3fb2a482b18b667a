"""Open Inference Protocol v2 (Triton, KServe, MLServer) over the same runtime and adaptive batcher."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nnship.service.security import REQUEST_ID
from nnship.service.validation import RequestError, printable

log = logging.getLogger(__name__)
ECHO_CHARS = 64  # client strings echoed in an error are cut to this many characters


class _State:
    service: Any = None  # the NnshipService instance of this worker, set once it is warmed up


STATE = _State()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": REQUEST_ID.get()}, status_code=status)


def _echo(text: str) -> str:
    """A client string quoted for an error message, cut short."""
    return repr(printable(text, ECHO_CHARS))


async def _internal_error(request: Request, exc: Exception) -> Response:
    """What a route raised: the service's JSON 500 (the Guard, outside, logs the exception)."""
    return _error(500, "internal error")


def _unknown(svc: Any, loc: str, message: str) -> Response:
    error = RequestError(
        status=404, reason="unknown_model", loc=["path", loc], rule="unknown_model", message=message
    )
    return svc.reject(error, REQUEST_ID.get())


def _service_or_error(request: Request) -> tuple[Any, Response | None]:
    svc = STATE.service
    if svc is None:
        return None, _error(503, "model is loading")
    name = request.path_params.get("name")
    version = request.path_params.get("version")
    if name is not None and name != svc.model:
        return svc, _unknown(
            svc, "name", f"unknown model {_echo(name)}; this server serves {svc.model!r}"
        )
    if version is not None and version != svc.version:
        return svc, _unknown(
            svc,
            "version",
            f"unknown version {_echo(version)} of {svc.model}; serving {svc.version}",
        )
    return svc, None


async def server_metadata(request: Request) -> Response:
    import nnship

    return JSONResponse({"name": "nnship", "version": nnship.__version__, "extensions": []})


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    svc = STATE.service
    ok = svc is not None and svc.ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _tensor_shape(shape: list[int], sequence: bool) -> list[int]:
    return [-1, -1, *shape[1:]] if sequence else [-1, *shape]


def _feature_stats(m: Any) -> dict[str, list[float]]:
    """Each feature's training-split statistics, in feature order: what a client (the load test)
    needs to draw plausible rows without the package."""
    stats = m.input.stats
    return {k: [float(getattr(s, k)) for s in stats] for k in ("mean", "std", "min", "max")}


async def model_metadata(request: Request) -> Response:
    svc, err = _service_or_error(request)
    if err:
        return err
    m = svc.runtime.manifest
    n_out = len(svc.labels) if svc.classification else 1
    outputs = [{"name": "output", "datatype": "FP32", "shape": [-1, n_out]}]
    if svc.classification:
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [-1, n_out]})
    return JSONResponse(
        {
            "name": svc.model,
            "versions": [svc.version],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": _tensor_shape(m.input.shape, svc.validator.sequence),
                }
            ],
            "outputs": outputs,
            "parameters": {
                "variant": svc.runtime.variant,
                "provider": svc.runtime.provider,
                "task": m.task,
                "labels": svc.labels,
                "feature_names": m.input.feature_names,
                "feature_stats": _feature_stats(m),
            },
        }
    )


async def model_ready(request: Request) -> Response:
    svc, err = _service_or_error(request)
    if err:
        return err
    return JSONResponse(
        {"name": svc.model, "ready": bool(svc.ready)}, status_code=200 if svc.ready else 503
    )


async def infer(request: Request) -> Response:
    svc, err = _service_or_error(request)
    if err:
        return err
    rid = REQUEST_ID.get()
    body_bytes = await request.body()
    try:
        body = svc.validator.parse(body_bytes, parse_constant=_reject_constant)
        x, wanted = svc.validator.v2_inputs(body)
        flagged, counts = svc.validator.out_of_range(x)
    except RequestError as e:
        return svc.reject(e, rid)
    out, refusal = await svc.infer_checked(x, rid)
    if refusal is not None:
        return refusal
    answer = svc.answer(x, out, flagged, counts)
    tensors = {"output": out.astype(np.float32)}
    if svc.classification:
        tensors["probabilities"] = np.asarray(answer["probabilities"], dtype=np.float32)
    response: dict[str, Any] = {
        "model_name": svc.model,
        "model_version": svc.version,
        "outputs": [
            {
                "name": n,
                "datatype": "FP32",
                "shape": list(tensors[n].shape),
                "data": tensors[n].reshape(-1).tolist(),
            }
            for n in wanted or svc.validator.outputs
        ],
        "parameters": {"variant": svc.runtime.variant},
    }
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        response["id"] = printable(body["id"])
    if flagged:
        response["parameters"]["out_of_range"] = json.dumps(flagged)
    return JSONResponse(response)


def _reject_constant(name: str) -> float:
    raise RequestError(
        status=400,
        reason="non_finite",
        loc=["inputs", 0, "data"],
        rule="finite_required",
        message=f"{name} is not accepted; values must be finite numbers",
    )


# Starlette's ServerErrorMiddleware answers an exception itself, in plain text, before re-raising
# it: the handler makes that answer the JSON one (the Guard outside sees a started response)
oip_app = Starlette(
    exception_handlers={Exception: _internal_error},
    routes=[
        Route("/", server_metadata, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/models/{name}", model_metadata, methods=["GET"]),
        Route("/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/models/{name}/infer", infer, methods=["POST"]),
        Route("/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    ],
)
