"""nnship_* Prometheus families (prometheus_client), beside BentoML's own; label values from closed sets."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from nnship.service.validation import REASONS

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

INFERENCE_SECONDS = Histogram(
    "nnship_inference_seconds",
    "ONNX Runtime time per inference batch",
    ["model", "variant", "provider"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "nnship_batch_size",
    "Rows per inference batch formed by adaptive batching",
    ["model", "variant"],
    buckets=BATCH_BUCKETS,
)
REJECTED = Counter(
    "nnship_requests_rejected", "Requests rejected before inference, by reason", ["reason"]
)
PREDICTIONS = Counter(
    "nnship_predictions",
    "Predicted labels (classification) or rows (regression)",
    ["model", "label"],
)
OUT_OF_RANGE = Counter(
    "nnship_out_of_range_inputs",
    "Input values outside the training range, by feature",
    ["model", "feature"],
)
FEATURE_DRIFT = Gauge(
    "nnship_feature_drift_psi",
    "Population stability index of the latest window of inputs against the training quantiles",
    ["feature"],
    multiprocess_mode="mostrecent",  # each worker's own window; the latest published value wins
)
MODEL_INFO = Gauge(
    "nnship_model_info",
    "The model being served",
    ["model", "version", "variant", "provider", "onnx_sha256"],
    multiprocess_mode="max",
)
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
EVENT_LOOP_LAG = Histogram(
    "nnship_event_loop_lag_seconds",
    "How late the worker's event loop woke a periodic sleep (time it was held by other work)",
    buckets=LOOP_LAG_BUCKETS,
)
EVENT_LOOP_LAG_LAST = Gauge(
    "nnship_event_loop_lag_last_seconds",
    "The event-loop lag of the latest sample from any worker",
    multiprocess_mode="mostrecent",  # a dead worker's last value does not linger as a floor
)


def init_reasons() -> None:
    """Create every reason's series at 0 so rates work from the first rejection."""
    for reason in REASONS:
        REJECTED.labels(reason=reason)


def reject(reason: str) -> None:
    REJECTED.labels(reason=reason if reason in REASONS else "malformed").inc()
