"""The BentoML service: `bentoml serve nnship.service.service:NnshipService` (or `nnship serve MODEL`)."""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
from pydantic import Field
from starlette.responses import JSONResponse

from nnship.contracts import MANIFEST, read_manifest
from nnship.errors import NnshipError
from nnship.numeric import softmax
from nnship.service import drift, jobs, lifecycle, looplag, metrics, patches
from nnship.service.batching import AdaptiveBatcher, Overloaded
from nnship.service.encoding import Float32JSONResponse, dumps
from nnship.service.endpoint import PredictEndpoint
from nnship.service.oip import STATE, MountRoot, oip_app
from nnship.service.openapi import OpenAPIDocument
from nnship.service.runtime import Runtime, load_runtime
from nnship.service.security import REQUEST_ID, Guard, trust_forwarded
from nnship.service.settings import SERVE_TOKEN_ENV, Settings
from nnship.service.validation import RequestError, Validator

log = logging.getLogger(__name__)
JSON_TYPE = (b"content-type", b"application/json")
# BentoML's server logging keeps other loggers at WARNING
logging.getLogger("nnship.service").setLevel(logging.INFO)


try:
    SETTINGS = Settings.from_env()
except NnshipError as e:
    lifecycle.fail(e)


def _model_name(ref: str) -> str:
    """The served model's name, for the closed set of metric path labels."""
    if Path(ref).is_dir():
        try:
            return read_manifest(Path(ref) / MANIFEST).model
        except NnshipError:
            return Path(ref).name
    return ref.split(":")[0]


def _declared_model(ref: str) -> bentoml.models.BentoModel | None:
    if Path(ref).is_dir():
        return None
    try:
        return bentoml.models.BentoModel(ref)
    except Exception:  # not a valid tag, or the store cannot say: start-up says so in one line
        return None


if lifecycle.in_serve_main_process():
    lifecycle.preflight(SETTINGS)
trust_forwarded(SETTINGS.trusted_proxies)  # before BentoML's worker configures uvicorn
patches.install(SETTINGS, _model_name(SETTINGS.model))  # before BentoML builds the app


@bentoml.service(
    name="nnship",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.timeout_s, "max_concurrency": SETTINGS.max_concurrency},
    metrics={"enabled": True},
    logging={"access": {"enabled": SETTINGS.access_log}},
    tracing={} if SETTINGS.tracing else {"excluded_urls": ".*"},
)
@bentoml.asgi_app(oip_app, path="/v2", name="open-inference-v2")
class NnshipService:
    """Serves one nnship model package with ONNX Runtime behind an adaptive batcher."""

    model_ref = _declared_model(SETTINGS.model)  # a store model is part of `bentoml build`'s Bento

    def __init__(self) -> None:
        self.ready = False
        if (fd := lifecycle.listening_fd()) is not None:
            lifecycle.refuse_new_connections_on_stop(fd)
        try:
            self._start()
        except Exception as e:  # start-up or warm-up: fatal in one line, never a restart loop
            lifecycle.worker_failed(e)

    def _start(self) -> None:
        """Load and check the model, set up batching and metrics, warm up, then publish."""
        self.runtime: Runtime = load_runtime(SETTINGS.replace(model=self._package_ref()))
        m = self.runtime.manifest
        self.model, self.version = m.model, m.version or "local"
        self.labels = m.output.labels
        self.classification = m.classification
        self.validator = Validator(
            m, SETTINGS.max_rows, SETTINGS.max_seq_len, SETTINGS.strict_range, SETTINGS.range_margin
        )
        self.batcher = AdaptiveBatcher(
            self._run,
            SETTINGS.max_batch_size,
            SETTINGS.max_latency_ms,
            SETTINGS.max_wait_ms,
            concatenate=self.runtime.batch_independent,
        )
        metrics.init_reasons()
        metrics.MODEL_INFO.labels(
            model=self.model,
            version=self.version,
            variant=self.runtime.variant,
            provider=self.runtime.provider,
            onnx_sha256=self.runtime.sha256,
        ).set(1)
        # label children looked up once: prometheus_client's labels() costs a lock and a dict per call
        self._predicted = [
            metrics.PREDICTIONS.labels(model=self.model, label=label)
            for label in self.labels or ["value"]
        ]
        self._outside = [
            metrics.OUT_OF_RANGE.labels(model=self.model, feature=feature)
            for feature in self.validator.feature_names
        ]
        self._infer_seconds = metrics.INFERENCE_SECONDS.labels(
            model=self.model, variant=self.runtime.variant, provider=self.runtime.provider
        )
        self._batch_rows = metrics.BATCH_SIZE.labels(model=self.model, variant=self.runtime.variant)
        self._drift = None
        if SETTINGS.drift_window and drift.monitored(m):
            gauges = [metrics.FEATURE_DRIFT.labels(feature=f) for f in m.input.feature_names]
            self._drift = drift.DriftMonitor(m, SETTINGS.drift_window, gauges)
        sizes = self.runtime.warm_up(SETTINGS.max_batch_size)
        log.info("warmed up on batch sizes %s", sizes)
        jobs.ACTIVE[:] = [jobs.Jobs(SETTINGS, self.runtime.package.path, self.runtime.variant)]
        gc.collect()
        gc.freeze()  # start-up objects leave the collector's view: no long gen-2 pauses under load
        STATE.service = self
        looplag.start()  # samples this worker's event-loop lag into /metrics
        self.ready = True

    def _package_ref(self) -> str:
        """The package's folder: resolved through the declared store model, or the directory given."""
        if self.model_ref is None:
            return SETTINGS.model
        try:  # inside a served worker BentoML has already swapped in the resolved store model
            ref = self.model_ref if hasattr(self.model_ref, "path") else self.model_ref.resolve()
            return str(ref.path)
        except (
            Exception
        ) as e:  # BentoML raises NotFound, or a remote-lookup error without a cloud login
            problem = " ".join(f"{type(e).__name__}: {e}".split())
            raise NnshipError(
                f"model {SETTINGS.model} is not in the BentoML model store or unreadable: {problem}"
            ) from e

    def __is_ready__(self) -> bool:
        return self.ready

    # -- inference ---------------------------------------------------------------------------------
    def _run(self, x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.runtime.run(x)
        self._infer_seconds.observe(time.perf_counter() - t)
        self._batch_rows.observe(len(x))
        if self._drift is not None:  # after the answer is computed, still off the event loop
            self._drift.observe(x)
        return out

    async def infer_checked(
        self, x: np.ndarray, rid: str
    ) -> tuple[np.ndarray, JSONResponse | None]:
        """Inference through the batcher, with its failures already turned into responses."""
        try:
            out = await self.infer(x)
        except Overloaded:
            return x, self.overloaded(rid)
        except Exception:
            return x, self.failure(rid)
        try:
            self.check_output(out)
        except RequestError as e:
            return x, self.reject(e, rid)
        return out, None

    async def infer(self, x: np.ndarray) -> np.ndarray:
        """Through the adaptive batcher; raises Overloaded when the request would be too late."""
        return await self.batcher(x)

    # -- answers --------------------------------------------------------------------------------------
    def answer(
        self, x: np.ndarray, out: np.ndarray, flagged: list[dict[str, Any]], counts: np.ndarray
    ) -> dict[str, Any]:
        if flagged:
            for f in np.flatnonzero(counts):
                self._outside[f].inc(int(counts[f]))
        body: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "variant": self.runtime.variant,
        }
        if self.classification:
            p = softmax(out)
            idx = p.argmax(axis=1).tolist()
            for i in idx:
                self._predicted[i].inc()
            body.update(
                predictions=[self.labels[i] for i in idx],
                probabilities=np.ascontiguousarray(p, dtype=np.float32),
            )
        else:
            self._predicted[0].inc(len(out))
            body["predictions"] = np.ascontiguousarray(out[:, 0], dtype=np.float32)
        if flagged:
            body["out_of_range"] = flagged
        return body

    @staticmethod
    def check_output(out: np.ndarray) -> None:
        """Inputs far outside the training range can overflow the network: say so, do not crash."""
        if not np.isfinite(out).all():
            raise RequestError(
                status=422,
                reason="non_finite_output",
                loc=["inputs"],
                rule="finite_output",
                message="the model's output is not finite for these inputs (values far outside the "
                "training range)",
            )

    @staticmethod
    def reject(e: RequestError, request_id: str = "") -> JSONResponse:
        return JSONResponse(
            {**e.body(), "request_id": request_id},
            status_code=e.status,
            headers={"x-nnship-reject": e.reason},
        )

    @staticmethod
    def failure(request_id: str) -> JSONResponse:
        log.exception("inference failed (request id %s)", request_id)
        return JSONResponse({"error": "internal error", "request_id": request_id}, status_code=500)

    @staticmethod
    def overloaded(request_id: str) -> JSONResponse:
        return JSONResponse(
            {
                "error": "overloaded: the request would miss the batching deadline; retry",
                "request_id": request_id,
            },
            status_code=503,
            headers={"retry-after": "1"},
        )

    async def respond(self, parse: Callable[[Any], np.ndarray], value: Any) -> JSONResponse:
        """The /predict answer: validate, flag out-of-range rows, infer through the batcher."""
        rid = REQUEST_ID.get()
        try:
            x = parse(value)
            flagged, counts = self.validator.out_of_range(x)
        except RequestError as e:
            return self.reject(e, rid)
        out, refusal = await self.infer_checked(x, rid)
        if refusal is not None:
            return refusal
        return Float32JSONResponse(self.answer(x, out, flagged, counts))

    async def predict_json(self, raw: bytes, csv_body: bool = False) -> JSONResponse:
        """/predict for a raw body (JSON, or CSV when `csv_body`), as `service/endpoint.py`
        receives it."""
        parse = self.validator.predict_csv if csv_body else self.validator.predict_body
        return await self.respond(parse, raw)

    async def predict_raw(
        self, raw: bytes, csv_body: bool, rid: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """/predict for a raw body as `service/fastlane.py` answers it: (status, headers, body),
        the same answer `predict_json` gives, without a response object in between."""
        parse = self.validator.predict_csv if csv_body else self.validator.predict_body
        try:
            x = parse(raw)
            flagged, counts = self.validator.out_of_range(x)
        except RequestError as e:
            return _parts(self.reject(e, rid))
        out, refusal = await self.infer_checked(x, rid)
        if refusal is not None:
            return _parts(refusal)
        body = dumps(self.answer(x, out, flagged, counts))
        return 200, [(b"content-length", b"%d" % len(body)), JSON_TYPE], body

    def route_predict_body(self, raw: bytes, csv_body: bool = False) -> JSONResponse | bytes:
        """The refusal /predict gives this body on the fast route, or the JSON body BentoML's route
        is to answer: the body itself for positional rows, those rows in that form for records and
        CSV (BentoML's IO model takes positional JSON only)."""
        try:
            x, positional = self.validator.predict_request(raw, csv_body)
        except RequestError as e:
            return self.reject(e, REQUEST_ID.get())
        return raw if positional else json.dumps({"inputs": x.tolist()}).encode()

    @bentoml.api(route="/predict")
    async def predict(
        self,
        inputs: Annotated[
            list,
            Field(
                description="rows shaped [N, *input_shape], numbers only (tabular models: or "
                "records keyed by feature name)"
            ),
        ],
    ) -> dict[str, Any]:
        """Predict labels and probabilities (classification) or values (regression) for N rows."""
        return await self.respond(self.validator.predict_inputs, inputs)

    @bentoml.task(route=jobs.ROUTE)
    async def batch(
        self,
        ctx: bentoml.Context,
        file: Annotated[
            Path, Field(description="the rows: a Parquet file, or CSV with a header row")
        ],
        output_format: Annotated[
            Literal["auto", "parquet", "csv"],
            Field(description="the result file's format; auto: the input's"),
        ] = "auto",
        max_reject_fraction: Annotated[
            float, Field(ge=0, le=1, description="fail once this fraction of rows is rejected")
        ] = 1.0,
        keep: Annotated[
            str,
            Field(
                max_length=20_000,
                description="comma-separated input columns copied to the result unchanged "
                "(row identifiers)",
            ),
        ] = "",
    ) -> Path:
        """A batch job (`nnship predict`) over an uploaded file; the result is a file of
        predictions, its rejected rows at /batch/rejects."""
        job = jobs.current()
        if job is None:
            raise bentoml.exceptions.ServiceUnavailable("the model is not loaded yet")
        task_id = getattr(ctx.request.state, "task_id", "")
        try:
            request = jobs.JobRequest(output_format, max_reject_fraction, jobs.keep_columns(keep))
            result = await job.run(task_id, file, request)
        except jobs.JobFailed as e:
            raise bentoml.exceptions.InvalidArgument(str(e)) from None
        return jobs.result_response(result)  # BentoML's result store cannot take a FileResponse


def _parts(response: JSONResponse) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A response's status, headers and body, as its own `__call__` would send them."""
    return response.status_code, list(response.raw_headers), bytes(response.body)


# outermost first: the guard checks every request, then /predict is answered without the router
# (with tracing on, BentoML's API layer answers: it links each response to its span by header)
NnshipService.add_asgi_middleware(Guard, settings=SETTINGS)
NnshipService.add_asgi_middleware(jobs.JobRoutes)
NnshipService.add_asgi_middleware(
    PredictEndpoint, enabled=SETTINGS.predict_route == "asgi" and not SETTINGS.tracing
)
NnshipService.add_asgi_middleware(OpenAPIDocument, service=NnshipService, settings=SETTINGS)
NnshipService.add_asgi_middleware(MountRoot)
if os.environ.get(SERVE_TOKEN_ENV):
    NnshipService.add_asgi_middleware(lifecycle.ServeToken, token=os.environ[SERVE_TOKEN_ENV])
