"""Service settings, defined once: type, allowed range or choices, default and help text per field.

They are read from NNSHIP_* environment variables (`Settings.from_env`); `nnship serve` derives its
flags from the same fields (`service/cli.py`) and the README's settings table is generated from them
(`python -m nnship.service.settings --markdown`, checked by tests/unit/test_settings.py). A value
outside its range (NaN and infinities included), of the wrong type or not among the choices is
refused in one line naming the variable and what is allowed. The API key itself is never a setting:
it is read from the environment variable that `api_key_env` names.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from nnship.cpus import usable_cores
from nnship.errors import NnshipError
from nnship.io import atomic_write

PREFIX = "NNSHIP_"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # what an API key may hold (sent as a header value)
# `nnship serve` passes a random token per start; its server echoes it on /readyz, so readiness is
# confirmed for this very server and not another one answering on the port
SERVE_TOKEN_ENV = "NNSHIP_SERVE_TOKEN"
SERVE_TOKEN_HEADER = "x-nnship-serve-token"
TABLE_BEGIN = "<!-- settings:begin (generated: python -m nnship.service.settings --markdown) -->"
TABLE_END = "<!-- settings:end -->"


def bounded(default: float, low: float, high: float, help: str, smallest: float = 0.0) -> Any:
    """A number allowed from low to high inclusive; with `smallest`, 0 (off) or at least it."""
    extra = {"range": [low, high]} | ({"smallest": smallest} if smallest else {})
    return Field(default, ge=low, le=high, description=help, json_schema_extra=extra)


class MappingEnv(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self.env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        """The mapping's upper-case variables (as nnship names them), keyed as the source looks up."""
        return {k.lower(): v for k, v in self.env.items() if k == k.upper() and v != ""}


def variable(name: str) -> str:
    """The environment variable that sets a field."""
    return PREFIX + name.upper()


class Settings(BaseSettings):
    """Every setting of the service; built from keyword values or from the environment."""

    # the environment is read by from_env only: Settings(...) in code holds just what it is given
    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_ignore_empty=True, frozen=True, extra="forbid"
    )

    model: str = Field(
        "digits-cnn:latest",
        description="MODEL[:VERSION] in the BentoML model store, or a package directory",
    )
    variant: str = Field(
        "auto",
        description="auto: the package's default (its GPU variant on CUDA), or a variant name",
    )
    workers: int = bounded(1, 1, 256, "worker processes")
    threads: int = bounded(
        0,
        0,
        1024,
        "ONNX Runtime intra-op threads per worker; 0: usable cores ÷ workers (a container's CPU "
        "limit counts)",
    )
    max_batch_size: int = bounded(
        128, 1, 65536, "rows per inference call formed by adaptive batching"
    )
    max_latency_ms: int = bounded(10000, 1, 3_600_000, "a request queued longer is shed with 503")
    max_wait_ms: float = bounded(
        0.0, 0.0, 10_000.0, "hold a part-filled batch this long for more requests (0: never wait)"
    )
    max_rows: int = bounded(1024, 1, 1_000_000, "rows one request may carry (400 past it)")
    max_body_bytes: int = bounded(
        4 << 20, 1, 1 << 30, "request body limit in bytes (413 past it, read no further)"
    )
    max_seq_len: int = bounded(
        0, 0, 1_000_000, "recurrent models: longest sequence accepted (0: 4× the training length)"
    )
    api_key_env: str = Field(
        "NNSHIP_API_KEY",
        description="variable holding the API key (see Security). Named explicitly (this variable "
        "or `--api-key-env`), it must be set and non-empty or start-up fails; left at the default "
        "and unset, the server starts without authentication and logs one warning line saying so",
    )
    protect_all: bool = Field(
        False,
        description="require the key for health, metadata and metrics too (`/livez` and `/healthz` "
        "stay open for probes)",
    )
    rate_limit: float = bounded(
        0.0,
        0.0,
        1_000_000.0,
        "requests per second per client address (429 with Retry-After, 1 to 3600 s), counted per "
        "worker process; 0: off, else at least 0.001",
        smallest=0.001,
    )
    rate_burst: int = bounded(0, 0, 1_000_000, "rate-limit bucket size; 0: max(1, 2 × rate limit)")
    auth_failures_per_minute: int = bounded(
        10,
        0,
        1_000_000,
        "wrong API keys per minute per client address; past it every request from that address "
        "gets 429 `auth_limited` until the bucket refills (per worker); 0: off",
    )
    trusted_proxies: str = Field(
        "",
        description="comma-separated IP addresses or CIDR networks of reverse proxies whose "
        "`X-Forwarded-For` names the client (`*` and host names are refused); empty: the peer "
        "address is the client and forwarded headers are ignored",
    )
    grace_s: float = bounded(
        20.0,
        1.0,
        3600.0,
        "on SIGTERM, SIGINT, SIGHUP or SIGQUIT: stop accepting, finish the requests in flight "
        "within this many seconds, exit 0 (`bentoml serve` takes `--timeout-graceful-shutdown`)",
    )
    max_concurrency: int = bounded(
        512, 1, 1_000_000, "requests in flight per service (429 with Retry-After past it)"
    )
    header_timeout_s: float = bounded(
        10.0,
        0.5,
        300.0,
        "seconds a connection may take to deliver a complete request head (the first request, and "
        "each next one on a keep-alive connection) before it is closed",
    )
    max_connections: int = bounded(
        4096,
        16,
        1_000_000,
        "open connections per worker: past it, the oldest connection with no request in progress "
        "is closed to make room (only when all are busy is the new one dropped)",
    )
    timeout_s: float = bounded(
        30.0,
        0.01,
        3600.0,
        "deadline of the whole exchange: 504 before the answer starts, the connection dropped if "
        "the client has not taken the answer by then",
    )
    strict_range: bool = Field(
        False, description="reject (422) instead of flag inputs outside the training range ± margin"
    )
    range_margin: float = bounded(
        0.1, 0.0, 100.0, "tolerance outside the training [min, max], as a fraction of the range"
    )
    drift_window: int = bounded(
        1000,
        0,
        100_000,
        "rows per worker whose per-feature population stability index against the training "
        "quantiles is published as `nnship_feature_drift_psi` once the window is full (tabular and "
        "sequence models); 0: off, else at least 50",
        smallest=50,
    )
    require_gpu: bool = Field(False, description="fail start-up unless CUDA really runs the model")
    tensorrt: bool = Field(False, description="try TensorRT before CUDA")
    tracing: bool = Field(
        False,
        description="BentoML's OpenTelemetry spans per request (costs throughput; configure an "
        "exporter with BentoML to use them)",
    )
    access_log: bool = Field(
        False, description="BentoML's per-request access log (costly at thousands of requests/s)"
    )
    bound_metric_paths: bool = Field(
        True, description="unknown paths share one `endpoint` series in BentoML's request metrics"
    )
    predict_route: Literal["asgi", "bentoml"] = Field(
        "asgi",
        description="`asgi`: `POST /predict` (and the served model's v2 infer) is answered by "
        "nnship's outermost layer, which does the guard's checks, the concurrency limit, the "
        "timeout and BentoML's request metrics itself, skipping BentoML's middleware, router and "
        "per-API layer (about half the CPU per request, see the serving report); `bentoml`: "
        "through BentoML's stack and API layer, which is also what answers whenever BentoML's "
        "CORS, its access log or `NNSHIP_TRACING` is on. Bad bodies get the same answer either way",
    )

    jobs_dir: str = Field(
        "",
        description="folder for batch jobs submitted to `/batch/submit` (their input, result and "
        "rejects files); empty: `nnship-jobs` in the temporary folder (`/tmp` in the container)",
    )
    max_jobs: int = bounded(
        1, 0, 256, "batch jobs running at once per worker, each in its own process; 0: jobs off"
    )
    max_queued_jobs: int = bounded(
        4, 0, 10_000, "batch jobs waiting for a slot per worker (429 with Retry-After past it)"
    )
    max_job_bytes: int = bounded(
        64 << 20,
        1,
        1 << 34,
        "upload limit of `/batch/submit` in bytes (413 past it, read no further)",
    )
    job_threads: int = bounded(
        1, 0, 1024, "ONNX Runtime intra-op threads of each batch job's process; 0: all usable cores"
    )
    job_workers: int = bounded(
        1,
        0,
        64,
        "threads beside inference that read, check and write each batch job's parts; 0: the usable "
        "cores the job's threads leave (at most 8)",
    )
    job_timeout_s: float = bounded(
        3600.0, 1.0, 604_800.0, "a batch job running longer is stopped and fails"
    )
    job_retention_s: float = bounded(
        3600.0,
        1.0,
        2_592_000.0,
        "a finished batch job's files and result are deleted this long after",
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources):  # type: ignore[override]
        """Only the values given: `from_env` is the one place the environment is read."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings from NNSHIP_* variables (os.environ by default); empty ones are unset."""
        return cls(**MappingEnv(cls, os.environ if env is None else env)())

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed, checked like the originals."""
        return type(self)(**{**self.model_dump(), **changes})

    @model_validator(mode="before")
    @classmethod
    def _check(cls, values: Any) -> Any:
        """Each value converted from text when needed, then refused in one line if not allowed."""
        values = dict(values)
        for name, value in values.items():
            if name in cls.model_fields:
                values[name] = check_field(name, cls.model_fields[name], value)
        if not ENV_NAME.fullmatch(values.get("api_key_env", "NNSHIP_API_KEY")):
            raise NnshipError(
                f"{variable('api_key_env')}={values['api_key_env']!r}: not an environment variable name"
            )
        check_proxies(values.get("trusted_proxies", ""))
        return values

    def to_env(self) -> dict[str, str]:
        return {variable(name): str(getattr(self, name)) for name in type(self).model_fields}

    @property
    def intra_op_threads(self) -> int:
        return self.threads or max(1, usable_cores() // self.workers)

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


def kind_of(info: FieldInfo) -> type:
    """A field's value type: bool, int, float or str (choices are text)."""
    return info.annotation if info.annotation in (bool, int, float) else str


def choices(info: FieldInfo) -> tuple[str, ...]:
    """A text field's closed set of values, or () when any text goes."""
    return get_args(info.annotation)


def allowed_range(info: FieldInfo) -> tuple[float, float, float] | None:
    """(low, high, smallest non-zero value or 0) of a numeric field, None for the others."""
    extra = info.json_schema_extra
    if not isinstance(extra, dict) or "range" not in extra:
        return None
    low, high = extra["range"]
    return low, high, extra.get("smallest", 0)


def check_field(name: str, info: FieldInfo, value: Any) -> Any:
    """The value, converted from text if given as text; refused in one line when not allowed."""
    kind = kind_of(info)
    if isinstance(value, str) and kind is not str:
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("1", "true", "yes")
            else:
                value = kind(value)
        except ValueError as e:
            raise NnshipError(f"{variable(name)}={value!r} is not a valid {kind.__name__}") from e
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise NnshipError(f"{variable(name)}={value!r} is not a valid {kind.__name__}")
    if kind is bool and not isinstance(value, bool):
        raise NnshipError(f"{variable(name)}={value!r} is not a valid bool")
    if (bounds := allowed_range(info)) is not None:
        low, high, smallest = bounds
        if kind is int and not isinstance(value, int):
            raise NnshipError(f"{variable(name)}={value!r} is not a valid int")
        if not (math.isfinite(value) and low <= value <= high) or 0 < value < smallest:
            allowed = describe(kind, smallest or low, high)
            if smallest:
                allowed = f"0 (off) or {allowed}"
            raise NnshipError(f"{variable(name)}={value!r} is out of range: allowed is {allowed}")
    if choices(info) and value not in choices(info):
        raise NnshipError(f"{variable(name)}={value!r}: must be one of {', '.join(choices(info))}")
    return value


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


def markdown_table() -> str:
    """The README's settings table, one row per setting, between its marker comments."""
    rows = [TABLE_BEGIN, "| variable | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        rows.append(
            f"| `{variable(name)}` | {shown_default(info)} | {allowed_text(info)} | {info.description} |"
        )
    return "\n".join([*rows, TABLE_END])


def shown_default(info: FieldInfo) -> str:
    """A default as the README shows it: `text`, a number, true/false, or empty."""
    value = info.default
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return number(value)
    return f"`{value}`" if value else "empty"


def allowed_text(info: FieldInfo) -> str:
    """What a field accepts, in words."""
    if (bounds := allowed_range(info)) is not None:
        low, high, smallest = bounds
        text = f"{number(smallest or low)} to {number(high)}"
        return f"0 or {text}" if smallest else text
    if choices(info):
        return " or ".join(f"`{c}`" for c in choices(info))
    return "true or false" if kind_of(info) is bool else "text"


def write_table(readme: Path) -> None:
    """Replace the table between the markers in `readme` with the current one."""
    text = readme.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise NnshipError(f"{readme}: no settings table markers ({TABLE_BEGIN} ... {TABLE_END})")
    start, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    updated = text[:start] + markdown_table() + text[end:]
    atomic_write(readme, lambda p: p.write_text(updated))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The README's settings table, from the settings.")
    p.add_argument("--markdown", action="store_true", help="print the table, with its markers")
    p.add_argument("--readme", type=Path, help="rewrite the table inside this README file")
    args = p.parse_args(argv)
    if args.readme is not None:
        write_table(args.readme)
    else:
        print(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
