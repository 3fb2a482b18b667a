"""Soak: hold ~50% of the measured capacity for a long while, sampling the worker's RSS and event-loop lag.

    python -m nnship.loadtests.soak [--duration 600] [--model MODEL[:VERSION]] [--report-dir reports]
    python -m nnship.loadtests.soak --url http://127.0.0.1:3000 --pid SERVE_PID   # a server already running

Without --url it serves the model (default: a tiny iris mlp trained and exported into a temporary
BentoML home) with one worker. It first measures capacity with a short closed-loop run, then sends
single-row /predict requests open-loop at a fixed rate (latency counted from each request's scheduled
time) and every few seconds samples the worker's RSS and the service's
`nnship_event_loop_lag_seconds` histogram. Pass: no errors, and RSS growth under 10% from minute 2
(or a third of a shorter run) to the end. Writes soak.md, soak.json and soak.png to --report-dir and
exits 1 when a criterion fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from nnship.io import atomic_write, atomic_write_json
from nnship.loadtests.rows import predict_bodies
from nnship.probe import wait_ready

log = logging.getLogger(__name__)

LAG = "nnship_event_loop_lag_seconds"
RSS_GROWTH_LIMIT = 0.10
BENTOML_SERVE = [sys.executable, "-m", "bentoml", "serve", "nnship.service.service:NnshipService"]
MAX_IN_FLIGHT = 512  # more than this outstanding: the server is not keeping up (counted as errors)


@dataclass
class Window:
    """What one sampling interval saw."""

    t: float  # seconds since the soak started, at the end of the window
    sent: int = 0
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, from the scheduled time
    rss_mb: float | None = None
    lag_p99_ms: float | None = None
    lag_mean_ms: float | None = None

    def row(self) -> dict:
        lat = np.asarray(self.latencies) * 1e3
        return {
            "t_s": round(self.t, 1),
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "rss_mb": self.rss_mb,
            "lag_p99_ms": self.lag_p99_ms,
            "lag_mean_ms": self.lag_mean_ms,
        }


# -- the server ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_model(work: Path) -> str:
    """Train and export a tiny iris mlp into the BentoML home; returns its tag."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.training.train import TrainConfig, train

    run = work / "runs" / "iris-soak"
    train(TrainConfig(model="mlp", dataset="iris", epochs=5, out=str(run)))
    opts = ExportOptions(str(run), name="iris-soak", variants=("fp32",), bench_seconds=0.05)
    return f"iris-soak:{export_run(opts).version}"


@contextlib.contextmanager
def serve(model: str, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`bentoml serve` of the model with one worker on a free loopback port: (url, serve pid)."""
    port = _free_port()
    settings = {"NNSHIP_MODEL": model, "NNSHIP_WORKERS": "1", "NNSHIP_THREADS": "1"}
    proc = subprocess.Popen(
        [*BENTOML_SERVE, "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env, **settings, "BENTOML_DO_NOT_TRACK": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    if not wait_ready(f"{url}/readyz", timeout=timeout, alive=lambda: proc.poll() is None):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        raise RuntimeError(f"the server was not ready in {timeout} s")


def worker_pid(serve_pid: int) -> int | None:
    """The service worker under `bentoml serve` (the first, when there are several)."""
    try:
        kids = psutil.Process(serve_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    workers = [k for k in kids if "_bentoml_impl.worker" in " ".join(_cmdline(k))]
    return min(workers, key=lambda k: k.pid).pid if workers else None


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def rss_mb(pid: int | None) -> float | None:
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 2) if pid else None
    except psutil.NoSuchProcess:
        return None


# -- event-loop lag from /metrics --------------------------------------------------------------------
async def lag_histogram(session: aiohttp.ClientSession, url: str) -> dict[float, float]:
    """The service's cumulative lag histogram: {upper bound: count}, +inf included; {} if absent."""
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    for fam in text_string_to_metric_families(text):
        if fam.name == LAG:
            return {
                float(s.labels["le"]): s.value for s in fam.samples if s.name == f"{LAG}_bucket"
            } | {-1.0: next(s.value for s in fam.samples if s.name == f"{LAG}_sum")}
    return {}


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus-style quantile of a cumulative histogram (linear within the bucket)."""
    bounds = sorted(b for b in cumulative if b >= 0)
    total = cumulative.get(float("inf"), 0)
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for b in bounds:
        if cumulative[b] >= rank:
            if b == float("inf"):
                return lower
            span = cumulative[b] - below
            return lower + (b - lower) * ((rank - below) / span if span else 1.0)
        lower, below = b, cumulative[b]
    return lower


def _delta(now: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {k: v - before.get(k, 0.0) for k, v in now.items()}


def lag_figures(delta: dict[float, float]) -> tuple[float | None, float | None]:
    """(p99, mean) of the lag in a histogram delta, in ms."""
    count = delta.get(float("inf"), 0)
    p99 = quantile(0.99, delta)
    mean = delta.get(-1.0, 0.0) / count if count else None
    return (
        round(p99 * 1e3, 3) if p99 is not None else None,
        round(mean * 1e3, 3) if mean is not None else None,
    )


# -- load ------------------------------------------------------------------------------------------
async def _post(session: aiohttp.ClientSession, url: str, body: str) -> bool:
    try:
        async with session.post(
            f"{url}/predict", data=body, headers={"content-type": "application/json"}
        ) as r:
            await r.read()
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def capacity(url: str, bodies: list[str], seconds: float, clients: int = 16) -> float:
    """Closed loop: `clients` back-to-back senders for `seconds`; answered requests per second."""
    done = 0
    async with _session() as session:
        stop = time.monotonic() + seconds

        async def sender(i: int) -> None:
            nonlocal done
            while time.monotonic() < stop:
                ok = await _post(session, url, bodies[(done + i) % len(bodies)])
                done += ok  # after the await: `done += await ...` would lose concurrent updates

        start = time.monotonic()
        await asyncio.gather(*(sender(i) for i in range(clients)))
    return done / (time.monotonic() - start)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
        timeout=aiohttp.ClientTimeout(total=10),
    )


async def open_loop(
    url: str, bodies: list[str], rate: float, duration: float, every: float, serve_pid: int | None
) -> list[Window]:
    """Requests at a fixed rate for `duration` s; a Window (with RSS and lag) every `every` s."""
    windows = [Window(t=every)]
    in_flight: set[asyncio.Task] = set()
    async with _session() as session:
        lag_before = await lag_histogram(session, url)
        start = time.monotonic()

        async def one(scheduled: float, body: str) -> None:
            ok = await _post(session, url, body)
            w = windows[-1]
            w.ok += ok
            w.errors += not ok
            w.latencies.append(time.monotonic() - scheduled)

        sent = 0
        while (now := time.monotonic()) - start < duration:
            if now - start >= windows[-1].t:
                lag_now = await lag_histogram(session, url)
                _close(windows[-1], serve_pid, _delta(lag_now, lag_before))
                lag_before = lag_now
                windows.append(Window(t=windows[-1].t + every))
            due = int((now - start) * rate)
            for i in range(sent, due):
                windows[-1].sent += 1
                if len(in_flight) >= MAX_IN_FLIGHT:
                    windows[-1].errors += 1  # the server fell behind: count it, do not queue
                    continue
                task = asyncio.create_task(one(start + i / rate, bodies[i % len(bodies)]))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            sent = due
            await asyncio.sleep(0.002)
        if in_flight:
            await asyncio.wait(in_flight)
        _close(windows[-1], serve_pid, _delta(await lag_histogram(session, url), lag_before))
    return windows


def _close(w: Window, serve_pid: int | None, lag_delta: dict[float, float]) -> None:
    w.rss_mb = rss_mb(worker_pid(serve_pid)) if serve_pid else None
    w.lag_p99_ms, w.lag_mean_ms = lag_figures(lag_delta)
    log.info(
        "t=%5.0fs sent %d ok %d errors %d rss %s MB lag p99 %s ms",
        w.t,
        w.sent,
        w.ok,
        w.errors,
        w.rss_mb,
        w.lag_p99_ms,
    )


# -- verdict and report ------------------------------------------------------------------------------
def summarize(windows: list[Window], capacity_rps: float, rate: float, duration: float) -> dict:
    """Overall figures and the pass criteria."""
    rows = [w.row() for w in windows]
    lat = np.concatenate([np.asarray(w.latencies) for w in windows]) * 1e3
    base_t = min(120.0, duration / 3)
    rss = [(r["t_s"], r["rss_mb"]) for r in rows if r["rss_mb"] is not None]
    base = next((v for t, v in rss if t >= base_t), None)
    end = rss[-1][1] if rss else None
    growth = (end - base) / base if base and end is not None else None
    errors = sum(w.errors for w in windows)
    lags = [r["lag_p99_ms"] for r in rows if r["lag_p99_ms"] is not None]
    summary = {
        "capacity_rps": round(capacity_rps, 1),
        "target_rps": round(rate, 1),
        "achieved_rps": round(sum(w.ok for w in windows) / duration, 1),
        "duration_s": duration,
        "requests": sum(w.sent for w in windows),
        "errors": errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
        "rss_baseline_at_s": base_t,
        "rss_baseline_mb": base,
        "rss_end_mb": end,
        "rss_max_mb": max((v for _, v in rss), default=None),
        "rss_growth": round(growth, 4) if growth is not None else None,
        "lag_p99_ms_worst_window": max(lags, default=None),
        "lag_mean_ms": _mean([r["lag_mean_ms"] for r in rows]),
    }
    summary["passed"] = {
        "no_errors": errors == 0,
        "rss_growth_under_10pct": growth is not None and growth < RSS_GROWTH_LIMIT,
    }
    summary["pass"] = all(summary["passed"].values())
    return {"summary": summary, "windows": rows}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 3) if known else None


def plot(result: dict, path: Path) -> None:
    """RSS and p99 latency (with the event-loop lag p99) over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["windows"]
    t = [r["t_s"] for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a.plot(t, [r["rss_mb"] for r in rows], color="tab:blue")
    a.set(ylabel="worker RSS (MB)", title="soak: worker memory and latency")
    a.axvline(result["summary"]["rss_baseline_at_s"], color="grey", ls=":", lw=1)
    b.plot(t, [r["p99_ms"] for r in rows], color="tab:red", label="request p99")
    b.plot(t, [r["lag_p99_ms"] for r in rows], color="tab:green", label="event-loop lag p99")
    b.set(xlabel="seconds", ylabel="ms", yscale="log")
    b.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def markdown(result: dict, note: str) -> str:
    s = result["summary"]
    verdict = "PASS" if s["pass"] else "FAIL"
    lines = [
        "# Soak report",
        "",
        f"**{verdict}** — {note}",
        "",
        f"Capacity (closed loop, 16 clients): **{s['capacity_rps']} req/s**; held "
        f"**{s['target_rps']} req/s** open-loop (achieved {s['achieved_rps']}) for "
        f"{s['duration_s']:.0f} s: {s['requests']} single-row /predict requests.",
        "",
        "| criterion | figure | pass |",
        "| --- | --- | --- |",
        f"| errors (non-200, transport errors, timeouts, backlog over {MAX_IN_FLIGHT}) "
        f"| {s['errors']} | {s['passed']['no_errors']} |",
        f"| worker RSS growth from {s['rss_baseline_at_s']:.0f} s to the end (< 10%) "
        f"| {s['rss_baseline_mb']} → {s['rss_end_mb']} MB "
        f"({_pct(s['rss_growth'])}; max {s['rss_max_mb']} MB) "
        f"| {s['passed']['rss_growth_under_10pct']} |",
        "",
        f"Latency from the scheduled send time: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms. "
        f"Event-loop lag (`{LAG}`, sampled every 0.1 s in the worker): mean {s['lag_mean_ms']} ms, "
        f"worst window p99 {s['lag_p99_ms_worst_window']} ms.",
        "",
        "![RSS and p99 over time](soak.png)",
        "",
        "| t (s) | sent | errors | p50 ms | p99 ms | RSS MB | lag p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['t_s']:.0f} | {r['sent']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} "
        f"| {r['rss_mb']} | {r['lag_p99_ms']} |"
        for r in result["windows"]
    ]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.2f}%"


def write_reports(result: dict, directory: Path, note: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / "soak.json", result)
    text = markdown(result, note)
    atomic_write(directory / "soak.md", lambda p: p.write_text(text))
    plot(result, directory / "soak.png")


# -- main --------------------------------------------------------------------------------------------
def soak(args: argparse.Namespace, url: str, serve_pid: int | None) -> dict:
    bodies = predict_bodies(args.dataset)
    cap = asyncio.run(capacity(url, bodies, args.capacity_seconds))
    rate = cap * args.fraction
    log.info("capacity %.0f req/s; holding %.0f req/s for %.0f s", cap, rate, args.duration)
    windows = asyncio.run(open_loop(url, bodies, rate, args.duration, args.every, serve_pid))
    result = summarize(windows, cap, rate, args.duration)
    result["summary"].update(
        fraction=args.fraction, cpu_cores=os.cpu_count(), load_average=os.getloadavg()
    )
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m nnship.loadtests.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--duration", type=float, default=600, help="seconds at the fixed rate")
    p.add_argument("--fraction", type=float, default=0.5, help="share of the capacity to hold")
    p.add_argument("--capacity-seconds", type=float, default=10, help="closed-loop measurement")
    p.add_argument("--every", type=float, default=5, help="seconds between samples")
    p.add_argument("--model", help="MODEL[:VERSION] to serve (default: train a tiny iris mlp)")
    p.add_argument("--dataset", default="iris", help="built-in data set whose test rows are sent")
    p.add_argument("--url", help="soak a server already running here instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the `bentoml serve` process (for RSS)")
    p.add_argument("--report-dir", default="reports", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse(argv)
    if args.url:
        result = soak(args, args.url, args.pid)
    else:
        with tempfile.TemporaryDirectory(prefix="nnship-soak-") as work:
            env: dict[str, str] = {}
            model = args.model
            if model is None:
                env["BENTOML_HOME"] = os.environ["BENTOML_HOME"] = str(Path(work) / "bentoml")
                model = prepare_model(Path(work))
            with serve(model, env) as (url, pid):
                result = soak(args, url, pid)
    note = (
        f"one worker, one intra-op thread, {os.cpu_count()} CPU cores shared by the load generator, "
        f"the server and anything else on the machine (load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in result['summary']['load_average'])})."
    )
    write_reports(result, args.report_dir, note)
    s = result["summary"]
    print(
        f"soak {'PASS' if s['pass'] else 'FAIL'}: {s['requests']} requests at {s['target_rps']} req/s, "
        f"{s['errors']} errors, RSS growth {_pct(s['rss_growth'])}, p99 {s['p99_ms']} ms, "
        f"worst lag p99 {s['lag_p99_ms_worst_window']} ms -> {args.report_dir}/soak.md"
    )
    return 0 if s["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
