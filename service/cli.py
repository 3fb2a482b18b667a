"""`nnship serve MODEL[:VERSION]`: check the package, then run `bentoml serve` with the settings."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

from export.store import load_package, takes_sequences
from nnship.errors import NnshipError
from service.settings import Settings

SERVICE = "service.service:NnshipService"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags override the NNSHIP_* variables only when given (defaults: README's settings table)."""
    p.add_argument(
        "model", help="MODEL[:VERSION] in the BentoML model store (or a package directory)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--variant", help="auto (the package's choice) or a variant name")
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=int, help="intra-op threads per worker (0: cores / workers)")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-wait-ms", type=float)
    p.add_argument("--max-latency-ms", type=int)
    p.add_argument("--max-rows", type=int)
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--api-key-env", help="variable holding the API key (unset or empty: no auth)")
    p.add_argument(
        "--protect-all",
        action="store_true",
        default=None,
        help="require the key for health and metrics too",
    )
    p.add_argument("--rate-limit", type=float, help="requests/s per client (0: off)")
    p.add_argument("--max-concurrency", type=int)
    p.add_argument("--timeout-s", type=float)
    p.add_argument(
        "--strict-range",
        action="store_true",
        default=None,
        help="reject inputs outside the training range",
    )
    p.add_argument(
        "--require-gpu",
        action="store_true",
        default=None,
        help="fail unless CUDA really runs the model",
    )
    p.add_argument("--tensorrt", action="store_true", default=None, help="try TensorRT before CUDA")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings, with the flags that were given on top."""
    given = {
        k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__ and v is not None
    }
    return replace(Settings.from_env(), **given)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    package = load_package(
        settings.model
    )  # one-line refusal of a missing, tampered or truncated file
    env = {**os.environ, **settings.to_env(), "BENTOML_DO_NOT_TRACK": "true"}
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://{args.host}:{args.port}"
    try:
        while proc.poll() is None:
            try:
                req = urllib.request.Request(
                    f"{url}/readyz", headers={"x-api-key": settings.api_key()}
                )
                with urllib.request.urlopen(req, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        if proc.poll() is not None:
            raise NnshipError(f"the service exited with code {proc.returncode} before it was ready")
        print(
            f"\nnnship: serving {settings.model} at {url} (OpenAPI: {url}/docs.json, metrics: {url}/metrics)"
        )
        print("try:  " + example_curl(url, package.manifest, settings), flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()


def example_curl(url: str, manifest: dict, settings: Settings) -> str:
    """A curl line with one typical row: each feature's training-split median."""
    import numpy as np

    shape = manifest["input"]["shape"]
    row = np.array([s["quantiles"]["q50"] for s in manifest["input"]["stats"]])
    if takes_sequences(manifest):  # stats are per feature: repeat them over the time steps
        row = np.tile(row, (shape[0], 1))
    example = np.round(row.reshape(shape), 3).tolist()
    key = f' -H "Authorization: Bearer ${settings.api_key_env}"' if settings.api_key() else ""
    return (
        f"curl -s -X POST {url}/predict -H 'Content-Type: application/json'{key} "
        f"-d '{{\"inputs\": [{example}]}}'"
    ).replace("], [", "],[")


def main(argv: list[str] | None = None) -> int:
    from nnship.cli import run_guarded

    p = argparse.ArgumentParser(
        prog="nnship serve", description="Serve a model package with BentoML."
    )
    add_arguments(p)
    return run_guarded(run, p.parse_args(argv))
