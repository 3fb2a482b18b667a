"""`nnship loadtest`: run the Locust scenario headless against any served model and gate on errors
and p99 latency, or sweep the load with wrk to find the knee (`--sweep`, `--batching-sweep`: see
sweep.py). The model and its row shape come from the server's v2 metadata; the rows are drawn from
the training statistics it lists, or read from a file of real rows."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nnship.errors import NnshipError
from nnship.loadtests.rows import (
    SEQ_LEN,
    Served,
    auth_headers,
    drawn_rows,
    file_rows,
    served_model,
)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="base URL of a running nnship service")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--duration", default="60s", help="Locust run time, e.g. 30s, 2m")
    p.add_argument("--slo-p99-ms", type=float, default=50.0, help="p99 latency bound for /predict")
    p.add_argument("--model", help="the served model's name (default: the one the server names)")
    p.add_argument(
        "--rows",
        metavar="FILE",
        help="send real rows from a CSV, Parquet, JSON Lines or NPY file (default: rows drawn "
        "from the model's training statistics)",
    )
    p.add_argument(
        "--target", metavar="COL", help="the label column of a --rows CSV or Parquet file"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn rows")
    p.add_argument(
        "--seq-len", type=int, default=SEQ_LEN, help="time steps of drawn sequences (RNN models)"
    )
    from nnship.loadtests import sweep

    sweep.add_arguments(p)


def request_rows(args: argparse.Namespace, served: Served) -> tuple[np.ndarray, str]:
    """The rows to send and where they come from: the --rows file, or drawn from the statistics."""
    rows = (
        file_rows(args.rows, served, args.target)
        if args.rows
        else drawn_rows(served, seed=args.seed, seq_len=args.seq_len)
    )
    return rows, args.rows or f"drawn from the training statistics (seed {args.seed})"


def run(args: argparse.Namespace) -> int:
    from nnship.loadtests import sweep

    if args.target and not args.rows:
        raise NnshipError("--target names the label column of a --rows file; pass --rows FILE")
    if args.seq_len < 1:
        raise NnshipError(f"--seq-len {args.seq_len}: must be at least 1")
    if args.batching_sweep:
        if args.host or args.sweep:
            raise NnshipError("--batching-sweep serves the model itself: drop --host and --sweep")
        return sweep.run_batching_sweep(args)
    if not args.host:
        raise NnshipError("pass --host URL (a running service), or --batching-sweep MODEL")
    if (
        not args.sweep
        and shutil.which("locust") is None
        and not ((Path(sys.executable).parent / "locust").exists())
    ):
        raise NnshipError("locust is not installed: pip install 'nnship[loadtest]'")
    if args.sweep:
        sweep.check_arguments(args)
    host = args.host.rstrip("/")
    api_key = os.environ.get("NNSHIP_API_KEY")
    served = served_model(host, args.model, auth_headers(api_key))
    rows, source = request_rows(args, served)
    print(
        f"loadtest {host}: model {served.name}, {len(rows)} rows of shape {list(rows.shape[1:])} {source}"
    )
    if args.sweep:
        return sweep.run_sweep(args, host, served, rows)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "run"
        np.save(Path(tmp) / "rows.npy", rows)
        failure = Path(tmp) / "first-failure.json"
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            host,
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
        env = {
            "NNSHIP_LOADTEST_ROWS": str(Path(tmp) / "rows.npy"),
            "NNSHIP_LOADTEST_MODEL": served.name,
            "NNSHIP_LOADTEST_FAILURE": str(failure),
        }
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        stats = Path(f"{prefix}_stats.csv")
        if proc.returncode != 0 or not stats.exists():
            raise NnshipError(
                f"locust failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
            )
        table = {r["Name"]: r for r in csv.DictReader(stats.open())}
        first = json.loads(failure.read_text()) if failure.exists() else None
    predict, total = table.get("/predict", {}), table["Aggregated"]  # no row: no /predict answered
    p99, failures, requests = (
        _ms(predict.get("99%")),
        int(total["Failure Count"]),
        int(total["Request Count"]),
    )
    rps = float(total["Requests/s"])
    ok = failures == 0 and p99 <= args.slo_p99_ms and requests > 0
    print(
        f"loadtest {host}: {requests} requests, {rps:.1f} req/s, /predict p50 {_ms(predict.get('50%')):.0f} ms "
        f"p99 {p99:.0f} ms, {failures} failures -> {'PASS' if ok else 'FAIL'} "
        f"(SLO p99 <= {args.slo_p99_ms} ms, zero failures)"
    )
    if first is not None:
        print(
            f"first failure: {first['request']} -> status {first['status']}: "
            f"{' '.join((first['body'] or first['error']).split())}"
        )
    return 0 if ok else 1


def _ms(cell: str | None) -> float:
    """A latency cell of Locust's stats CSV; NaN where it has none ("N/A", empty, missing)."""
    try:
        return float(cell or "nan")
    except ValueError:
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    from nnship.runner import run_guarded

    p = argparse.ArgumentParser(prog="nnship loadtest", description="Load-test a running service.")
    add_arguments(p)
    return run_guarded(run, p.parse_args(argv))
