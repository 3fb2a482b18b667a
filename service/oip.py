"""Open Inference Protocol v2 (Triton, KServe, MLServer) over the same runtime and adaptive batcher:
health, server and model metadata, the model configuration, the repository index and inference, with
tensor data in JSON or as binary (the binary tensor data extension)."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nnship.numeric import softmax
from nnship.service.encoding import Float32JSONResponse, dumps
from nnship.service.security import REQUEST_ID
from nnship.service.validation import RequestError, parse_json, printable

log = logging.getLogger(__name__)
ECHO_CHARS = 64  # client strings echoed in an error are cut to this many characters
MOUNT = "/v2"  # where BentoML mounts this app
HEADER_LENGTH = "inference-header-content-length"
# the protocol extensions this server implements (repository: the index; one model, no load/unload)
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]


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

    return JSONResponse({"name": "nnship", "version": nnship.__version__, "extensions": EXTENSIONS})


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


def _output_dims(svc: Any) -> list[int]:
    return [len(svc.labels) if svc.classification else 1]


async def model_config(request: Request) -> Response:
    """The model configuration as Triton writes it (dims without the batch axis, -1 for the
    sequence axis), with the batching this service does."""
    svc, err = _service_or_error(request)
    if err:
        return err
    shape = svc.runtime.manifest.input.shape
    dims = [-1, *shape[1:]] if svc.validator.sequence else list(shape)
    batcher = svc.batcher
    config: dict[str, Any] = {
        "name": svc.model,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": svc.validator.max_rows,
        "input": [
            {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": dims}
        ],
        "output": [
            {"name": name, "data_type": "TYPE_FP32", "dims": _output_dims(svc)}
            for name in svc.validator.outputs
        ],
        "instance_group": [
            {"count": 1, "kind": "KIND_GPU" if "CUDA" in svc.runtime.provider else "KIND_CPU"}
        ],
        "parameters": {
            "variant": {"string_value": svc.runtime.variant},
            "version": {"string_value": svc.version},
        },
    }
    if batcher.concatenate:  # a variant with batch-coupled operators runs each request alone
        config["dynamic_batching"] = {
            "preferred_batch_size": [batcher.max_batch_size],
            "max_queue_delay_microseconds": round(batcher.max_wait * 1e6),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(batcher.max_latency * 1e6),
            },
        }
    return JSONResponse(config)


INDEX_BODY = 'the body is {} or {"ready": true|false}'
MAX_INDEX_BODY = 1024  # bytes: an index request's options are a few


def _index_options(body: bytes) -> bool:
    """Whether the repository index request asks for ready models only."""
    if len(body) > MAX_INDEX_BODY:
        raise _bad("index_options", INDEX_BODY, [])
    options = parse_json(body) if body.strip() else {}
    if not isinstance(options, dict) or set(options) - {"ready"}:
        raise _bad("index_options", INDEX_BODY, [])
    ready_only = options.get("ready", False)
    if not isinstance(ready_only, bool):
        raise _bad("bool_required", "ready must be true or false", ["ready"])
    return ready_only


async def repository_index(request: Request) -> Response:
    """The one model this server serves, with its state; `{"ready": true}` lists only ready ones."""
    svc = STATE.service
    try:
        ready_only = _index_options(await request.body())
    except RequestError as e:
        return _reject(svc, e)
    if svc is None:
        return _error(503, "model is loading")
    if not svc.ready:
        entry = {"state": "UNAVAILABLE", "reason": "warming up"}
        return JSONResponse(
            [] if ready_only else [{"name": svc.model, "version": svc.version, **entry}]
        )
    return JSONResponse(
        [{"name": svc.model, "version": svc.version, "state": "READY", "reason": ""}]
    )


async def model_control(request: Request) -> Response:
    """Loading and unloading models: refused, this server serves one model."""
    svc = STATE.service
    served = f" ({svc.model})" if svc is not None else ""
    message = f"this server serves one model{served}; loading and unloading models is not supported"
    return _reject(svc, _bad("model_control", message, ["path"], reason="unsupported"))


def _bad(rule: str, message: str, loc: list[Any], reason: str = "malformed") -> RequestError:
    return RequestError(status=400, reason=reason, loc=loc, rule=rule, message=message)


def _reject(svc: Any, error: RequestError) -> Response:
    """The refusal as the service sends it (also before the model is loaded)."""
    if svc is None:
        return JSONResponse(
            {**error.body(), "request_id": REQUEST_ID.get()}, status_code=error.status
        )
    return svc.reject(error, REQUEST_ID.get())


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
    raw = await request.body()
    return await infer_raw(svc, raw, request.headers.get(HEADER_LENGTH), REQUEST_ID.get())


async def infer_raw(svc: Any, raw: bytes, header_length: str | None, rid: str) -> Response:
    """A v2 inference answer for a raw body (JSON, or the binary extension's JSON header of
    `header_length` bytes followed by tensor data): the route's work once the model and version are
    known, also what `service/fastlane.py` calls for the unversioned infer path."""
    try:
        body, binary = svc.validator.v2_body(raw, header_length, parse_constant=_reject_constant)
        x, wanted = svc.validator.v2_inputs(body, binary)
        flagged, counts = svc.validator.out_of_range(x)
    except RequestError as e:
        return svc.reject(e, rid)
    out, refusal = await svc.infer_checked(x, rid)
    if refusal is not None:
        return refusal
    tensors = _tensors(svc, out, counts)
    parameters: dict[str, Any] = {"variant": svc.runtime.variant}
    if flagged:
        parameters["out_of_range"] = json.dumps(flagged)
    response: dict[str, Any] = {"model_name": svc.model, "model_version": svc.version}
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        response["id"] = printable(body["id"])
    return _answer(response, tensors, wanted, parameters)


def _tensors(svc: Any, out: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """The answer's output tensors, with the prediction and out-of-range counters moved once per
    label and feature by their counts: counting each row (a lock and an mmap write each) cost
    ~0.2 ms of a 256-row request."""
    for f in np.flatnonzero(counts):
        svc._outside[f].inc(int(counts[f]))
    tensors = {"output": np.ascontiguousarray(out, dtype=np.float32)}
    if not svc.classification:
        svc._predicted[0].inc(len(out))
        return tensors
    p = np.ascontiguousarray(softmax(out), dtype=np.float32)
    per_label = np.bincount(p.argmax(axis=1), minlength=len(svc.labels))
    for label in np.flatnonzero(per_label):
        svc._predicted[label].inc(int(per_label[label]))
    tensors["probabilities"] = p
    return tensors


def _answer(
    response: dict[str, Any],
    tensors: dict[str, np.ndarray],
    wanted: list[tuple[str, bool]],
    parameters: dict[str, Any],
) -> Response:
    """The inference answer: JSON, or (with any output wanted as binary data) the JSON header
    followed by those outputs' FP32 little-endian bytes, in order, joined straight from the arrays'
    memory (one copy, into the body)."""
    outputs, chunks = [], []
    for name, binary in wanted:
        t = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(t.shape)}
        if binary:
            chunks.append(memoryview(np.ascontiguousarray(t, dtype="<f4")).cast("B"))
            entry["parameters"] = {"binary_data_size": chunks[-1].nbytes}
        else:
            entry["data"] = t.reshape(-1)
        outputs.append(entry)
    response = {**response, "outputs": outputs, "parameters": parameters}
    if not chunks:
        return Float32JSONResponse(response)
    header = dumps(response)
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


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
        Route("/models/{name}/config", model_config, methods=["GET"]),
        Route("/models/{name}/versions/{version}/config", model_config, methods=["GET"]),
        Route("/repository/index", repository_index, methods=["POST"]),
        Route("/repository/models/{name}/load", model_control, methods=["POST"]),
        Route("/repository/models/{name}/unload", model_control, methods=["POST"]),
        Route("/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/models/{name}/infer", infer, methods=["POST"]),
        Route("/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    ],
)


class MountRoot:
    """ASGI middleware: no redirects between slash spellings under /v2 (Starlette's router redirects
    a path to its other spelling, and Triton clients do not follow redirects). The mounted app's root
    answers at `/v2` as at `/v2/`; any other v2 path with a trailing slash is a 404."""

    def __init__(self, app: Any, prefix: str = MOUNT) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == self.prefix:
            scope = {**scope, "path": path + "/", "raw_path": path.encode() + b"/"}
        elif (
            path.startswith(self.prefix + "/") and path.endswith("/") and path != self.prefix + "/"
        ):
            response = _error(404, f"no such path {_echo(path)}; v2 paths have no trailing slash")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
