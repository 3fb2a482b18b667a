"""Service settings, read from NNSHIP_* environment variables (the `nnship serve` flags set them).

Each number's allowed range is declared once, next to its field (`metadata["range"]`), and checked
when the settings are built: a value outside it (NaN and infinities included) is refused in one line
naming the variable and the range.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from nnship.errors import NnshipError

PREFIX = "NNSHIP_"
PREDICT_ROUTES = ("asgi", "bentoml")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # what an API key may hold (sent as a header value)
# `nnship serve` passes a random token per start; its server echoes it on /readyz, so readiness is
# confirmed for this very server and not another one answering on the port
SERVE_TOKEN_ENV = "NNSHIP_SERVE_TOKEN"
SERVE_TOKEN_HEADER = "x-nnship-serve-token"


def bounded(default: float, low: float, high: float, smallest: float = 0.0) -> Any:
    """A numeric field allowed from low to high inclusive; with `smallest`, 0 (off) or at least it."""
    metadata = {"range": (low, high)} | ({"smallest": smallest} if smallest else {})
    return field(default=default, metadata=metadata)


def one_of(default: str, *choices: str) -> Any:
    """A text field that takes one of a closed set of values."""
    return field(default=default, metadata={"choices": choices})


def variable(name: str) -> str:
    """The environment variable that sets a field."""
    return PREFIX + name.upper()


@dataclass(frozen=True)
class Settings:
    model: str = "digits-cnn:latest"  # MODEL[:VERSION] in the BentoML model store, or a package dir
    # auto: the package's default (its GPU variant on CUDA), or a variant name
    variant: str = "auto"
    workers: int = bounded(1, 1, 256)  # worker processes
    # ONNX Runtime intra-op threads per worker; 0: cores // workers
    threads: int = bounded(0, 0, 1024)
    max_batch_size: int = bounded(128, 1, 65536)  # rows per inference call formed by batching
    # a request queued longer than this is shed with 503
    max_latency_ms: int = bounded(10000, 1, 3_600_000)
    # hold a part-filled batch this long for more requests (0: never wait)
    max_wait_ms: float = bounded(0.0, 0.0, 10_000.0)
    max_rows: int = bounded(1024, 1, 1_000_000)  # rows one request may carry
    max_body_bytes: int = bounded(4 << 20, 1, 1 << 30)  # larger bodies get 413 before they are read
    # recurrent models: longest sequence accepted; 0: 4x the training length
    max_seq_len: int = bounded(0, 0, 1_000_000)
    # the variable holding the API key; naming it explicitly makes the key required at start-up
    api_key_env: str = "NNSHIP_API_KEY"
    protect_all: bool = False  # also require the key for health, metadata and metrics
    # requests per second per client address; 0: off
    rate_limit: float = bounded(0.0, 0.0, 1_000_000.0, smallest=0.001)
    rate_burst: int = bounded(0, 0, 1_000_000)  # bucket size; 0: max(1, 2 x rate_limit)
    # failed authentications per minute per client before 429 (guessing keys); 0: off
    auth_failures_per_minute: int = bounded(10, 0, 1_000_000)
    # comma-separated proxy IP addresses or CIDR networks whose X-Forwarded-For names the client;
    # empty: trust none
    trusted_proxies: str = ""
    # SIGTERM/SIGINT: seconds to finish requests in flight before exiting
    grace_s: float = bounded(20.0, 1.0, 3600.0)
    max_concurrency: int = bounded(512, 1, 1_000_000)  # requests in flight per service before 503
    # seconds a connection may take to deliver a complete request head (the first one, and each
    # next one on a keep-alive connection once its first bytes arrive) before it is closed
    header_timeout_s: float = bounded(10.0, 0.5, 300.0)
    # open connections per worker; one past it is closed at once (keeps file descriptors free)
    max_connections: int = bounded(4096, 16, 1_000_000)
    timeout_s: float = bounded(30.0, 0.01, 3600.0)  # per request
    strict_range: bool = False  # reject inputs outside the training range instead of flagging them
    # tolerance outside [min, max], as a fraction of the range
    range_margin: float = bounded(0.1, 0.0, 100.0)
    require_gpu: bool = False  # fail start-up unless CUDA really runs the model
    tensorrt: bool = False  # try TensorRT before CUDA
    # OpenTelemetry spans per request (configure an exporter with BentoML to use them)
    tracing: bool = False
    access_log: bool = False  # BentoML's per-request access log (costly at thousands of requests/s)
    bound_metric_paths: bool = True  # unknown paths share one series in BentoML's request metrics
    # asgi: POST /predict is answered by nnship's ASGI endpoint in front of BentoML's router (same
    # contract, 20-40% less CPU per request); bentoml: through BentoML's API layer
    predict_route: str = one_of("asgi", *PREDICT_ROUTES)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(variable(f.name))
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
                    f"{variable(f.name)}={raw!r} is not a valid {kind.__name__}"
                ) from e
        return cls(**values)

    def __post_init__(self) -> None:
        for f in fields(self):
            check_field(f.name, type(f.default), f.metadata, getattr(self, f.name))
        if not ENV_NAME.fullmatch(self.api_key_env):
            raise NnshipError(
                f"{variable('api_key_env')}={self.api_key_env!r}: not an environment variable name"
            )
        check_proxies(self.trusted_proxies)

    def to_env(self) -> dict[str, str]:
        return {variable(f.name): str(getattr(self, f.name)) for f in fields(self)}

    @property
    def intra_op_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "")

    def required_api_key(self, explicit: bool) -> str:
        """The API key; an explicitly named key variable that is unset or empty is an error."""
        key = self.api_key()
        if explicit and not key:
            raise NnshipError(
                f"the API key variable {self.api_key_env} (named by --api-key-env or "
                f"{variable('api_key_env')}) is unset or empty; set it, or name none to serve "
                "without authentication"
            )
        if key and not VISIBLE_ASCII.fullmatch(key):
            raise NnshipError(
                f"the API key in {self.api_key_env} holds characters other than visible ASCII "
                "(letters, digits, punctuation; no spaces, accents or control characters)"
            )
        return key


def api_key_env_named(env: dict[str, str] | None = None) -> bool:
    """Whether the key variable was named explicitly (NNSHIP_API_KEY_ENV set)."""
    env = os.environ if env is None else env
    return bool(env.get(variable("api_key_env")))


def check_field(name: str, kind: type, metadata: Any, value: Any) -> None:
    """Refuse a value of the wrong type or outside the field's declared range or choices."""
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise NnshipError(f"{variable(name)}={value!r} is not a valid {kind.__name__}")
    if "range" in metadata:
        low, high = metadata["range"]
        if kind is int and not isinstance(value, int):
            raise NnshipError(f"{variable(name)}={value!r} is not a valid int")
        smallest = metadata.get("smallest", 0)
        if not (math.isfinite(value) and low <= value <= high) or 0 < value < smallest:
            allowed = describe(kind, smallest or low, high)
            if smallest:
                allowed = f"0 (off) or {allowed}"
            raise NnshipError(f"{variable(name)}={value!r} is out of range: allowed is {allowed}")
    if "choices" in metadata and value not in metadata["choices"]:
        raise NnshipError(
            f"{variable(name)}={value!r}: must be one of {', '.join(metadata['choices'])}"
        )


def check_proxies(proxies: str) -> None:
    """Refuse trusted proxies other than a comma list of IP addresses and CIDR networks."""
    for entry in filter(None, (p.strip() for p in proxies.split(","))):
        try:
            ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
        except ValueError:
            raise NnshipError(
                f"{variable('trusted_proxies')}={proxies!r}: {entry!r} is not an IP address or "
                "a CIDR network (like 10.0.0.0/8); list the proxies, '*' is not accepted"
            ) from None


def describe(kind: type, low: float, high: float) -> str:
    """'an integer from 1 to 256' or 'a number from 0.01 to 3600'."""
    noun = "an integer" if kind is int else "a finite number"
    return f"{noun} from {number(low)} to {number(high)}"


def number(v: float) -> str:
    """A bound as people write it: 3600, 0.01, 1048576."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"
