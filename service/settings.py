"""Service settings, read from NNSHIP_* environment variables (the `nnship serve` flags set them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from nnship.errors import NnshipError

PREFIX = "NNSHIP_"
PREDICT_ROUTES = ("asgi", "bentoml")


@dataclass(frozen=True)
class Settings:
    model: str = "digits-cnn:latest"  # MODEL[:VERSION] in the BentoML model store, or a package dir
    variant: str = (
        "auto"  # auto: the package's default (its GPU variant on CUDA), or a variant name
    )
    workers: int = 1  # worker processes
    threads: int = 0  # ONNX Runtime intra-op threads per worker; 0: cores // workers
    max_batch_size: int = 128  # rows per inference call formed by adaptive batching
    max_latency_ms: int = 10000  # a request queued longer than this is shed with 503
    max_wait_ms: float = 0.0  # hold a part-filled batch this long for more requests (0: never wait)
    max_rows: int = 1024  # rows one request may carry
    max_body_bytes: int = 4 << 20  # larger bodies get 413 before they are read
    max_seq_len: int = 0  # recurrent models: longest sequence accepted; 0: 4x the training length
    api_key_env: str = "NNSHIP_API_KEY"  # the variable holding the API key; unset or empty: no auth
    protect_all: bool = False  # also require the key for health, metadata and metrics
    rate_limit: float = 0.0  # requests per second per client (API key or address); 0: off
    rate_burst: int = 0  # bucket size; 0: max(1, 2 x rate_limit)
    max_concurrency: int = 512  # requests in flight per service before 503
    timeout_s: float = 30.0  # per request
    strict_range: bool = False  # reject inputs outside the training range instead of flagging them
    range_margin: float = 0.1  # tolerance outside [min, max], as a fraction of the range
    require_gpu: bool = False  # fail start-up unless CUDA really runs the model
    tensorrt: bool = False  # try TensorRT before CUDA
    tracing: bool = (
        False  # OpenTelemetry spans per request (configure an exporter with BentoML to use them)
    )
    access_log: bool = False  # BentoML's per-request access log (costly at thousands of requests/s)
    bound_metric_paths: bool = True  # unknown paths share one series in BentoML's request metrics
    # asgi: POST /predict is answered by nnship's ASGI endpoint in front of BentoML's router (same
    # contract, 20-40% less CPU per request); bentoml: through BentoML's API layer
    predict_route: str = "asgi"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            try:
                if kind is bool:
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    values[f.name] = raw.lower() in ("1", "true", "yes")
                else:
                    values[f.name] = kind(raw)
            except ValueError as e:
                raise NnshipError(
                    f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from e
        return cls(**values)

    def __post_init__(self) -> None:
        for name in ("workers", "max_batch_size", "max_rows", "max_body_bytes", "max_latency_ms"):
            if getattr(self, name) < 1:
                raise NnshipError(f"{name} ({PREFIX}{name.upper()}) must be at least 1")
        for name in ("threads", "max_seq_len", "rate_limit", "rate_burst", "max_wait_ms"):
            if getattr(self, name) < 0:
                raise NnshipError(f"{name} ({PREFIX}{name.upper()}) must not be negative")
        if self.predict_route not in PREDICT_ROUTES:
            raise NnshipError(
                f"predict_route ({PREFIX}PREDICT_ROUTE) must be one of {', '.join(PREDICT_ROUTES)}"
            )
        if self.timeout_s <= 0:
            raise NnshipError(f"timeout_s ({PREFIX}TIMEOUT_S) must be positive")

    def to_env(self) -> dict[str, str]:
        return {PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}

    @property
    def intra_op_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "")
