"""`nnship loadtest`: run the Locust scenario headless and gate on errors and p99 latency."""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nnship.errors import NnshipError

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="base URL of a running nnship service")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--duration", default="60s", help="Locust run time, e.g. 30s, 2m")
    p.add_argument("--slo-p99-ms", type=float, default=50.0, help="p99 latency bound for /predict")
    p.add_argument("--dataset", default="digits", help="data set whose test rows are sent")
    p.add_argument("--model", default="digits-cnn", help="model name for the /v2 calls")


def run(args: argparse.Namespace) -> int:
    if shutil.which("locust") is None and not (Path(sys.executable).parent / "locust").exists():
        raise NnshipError("locust is not installed: pip install 'nnship[loadtest]'")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            args.host,
            "-u",
            str(args.users),
            "-r",
            str(args.users),
            "-t",
            args.duration,
            "--csv",
            str(prefix),
            "--only-summary",
            "--exit-code-on-error",
            "0",
        ]
        env = {"NNSHIP_LOADTEST_DATASET": args.dataset, "NNSHIP_LOADTEST_MODEL": args.model}
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        stats = Path(f"{prefix}_stats.csv")
        if proc.returncode != 0 or not stats.exists():
            raise NnshipError(
                f"locust failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
            )
        rows = {r["Name"]: r for r in csv.DictReader(stats.open())}
    predict, total = rows["/predict"], rows["Aggregated"]
    p99, failures, requests = (
        float(predict["99%"]),
        int(total["Failure Count"]),
        int(total["Request Count"]),
    )
    rps = float(total["Requests/s"])
    ok = failures == 0 and p99 <= args.slo_p99_ms and requests > 0
    print(
        f"loadtest {args.host}: {requests} requests, {rps:.1f} req/s, /predict p50 {predict['50%']} ms "
        f"p99 {p99:.0f} ms, {failures} failures -> {'PASS' if ok else 'FAIL'} "
        f"(SLO p99 <= {args.slo_p99_ms} ms, zero failures)"
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    from nnship.runner import run_guarded

    p = argparse.ArgumentParser(prog="nnship loadtest", description="Load-test a running service.")
    add_arguments(p)
    return run_guarded(run, p.parse_args(argv))
