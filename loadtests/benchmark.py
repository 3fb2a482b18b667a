"""Serving benchmark: the nnship service vs a bare ASGI ONNX Runtime app, a naive Starlette one and
an echo app.

    python -m nnship.loadtests.benchmark [--duration 10] [--report reports/serving-benchmark.md]
    python -m nnship.loadtests.benchmark --v2-encodings   # only the v2 JSON-vs-binary section

Trains and exports two models into a temporary BentoML home (the default digits cnn, and a
compute-heavy wide mlp), serves each four ways (five for the cnn) with one worker process each, drives
them with wrk at 1, 16 and 64 concurrent single-row clients, measures nnship and bare again with two
workers at 64 clients, profiles the nnship worker with py-spy (where each request's CPU goes), then
sends 256-row v2 requests as JSON and as binary tensor data to an iris model and both digits models
(loadtests/v2encodings.py), and writes one report with every bar.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from nnship.io import atomic_write
from nnship.loadtests.rows import predict_bodies
from nnship.loadtests.wrk import lua_script, run_wrk
from nnship.probe import wait_ready
from nnship.service.connections import PROTOCOL

PROTOCOL_NAME = f"`{PROTOCOL.__module__}.{PROTOCOL.__qualname__}`"

CONCURRENCY = (1, 16, 64)
SERVERS = ("nnship", "nnship-bentoml-route", "bare", "naive", "echo")
TWO_WORKERS = ("nnship", "bare")  # measured again with 2 worker processes, at WIDE clients
WIDE = 64
# nnship's profile measured before its /predict lane, loop-side batches and orjson parsing (with
# the commit it was measured at): the report shows it beside the current one
PROFILE_BEFORE = Path("reports/serving-profile-before.json")
HEAVY_CONFIG = {"hidden": [3072, 3072, 3072], "batch_norm": False, "dropout": 0.0}  # ~2 ms a row


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


READY_TIMEOUT_S = 180


@contextlib.contextmanager
def _server(cmd: list[str], env: dict[str, str], url: str, ready_path: str):
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        probe = env.get("_PROBE", "").encode() if ready_path == "/predict" else None
        ready = wait_ready(
            url + ready_path,
            timeout=READY_TIMEOUT_S,
            headers={"content-type": "application/json"},
            body=probe,
            alive=lambda: proc.poll() is None,
        )
        if not ready:
            raise RuntimeError(
                f"{cmd[:4]} exited with {proc.returncode}"
                if proc.poll() is not None
                else f"{cmd[:4]} not ready in {READY_TIMEOUT_S} s"
            )
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(30)


def tiny_iris_model(home: Path, name: str) -> str:
    """A 3-epoch iris MLP exported as `name` into the BentoML store at `home`; returns its tag."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.training.train import TrainConfig, train

    os.environ["BENTOML_HOME"] = str(home)
    train(TrainConfig(model="mlp", dataset="iris", epochs=3, out=str(home / "runs" / "iris")))
    options = ExportOptions(
        str(home / "runs" / "iris"), name=name, variants=("fp32",), bench_seconds=0.02
    )
    return f"{name}:{export_run(options).version}"


def measure(url: str, script: Path, connections: int, seconds: int, pids: list[int]) -> dict:
    """wrk's figures plus the server processes' CPU time per answered request (user + system)."""
    before = sum(_cpu_seconds(p) for p in pids)
    r = run_wrk(url, script, connections, seconds)
    used = sum(_cpu_seconds(p) for p in pids) - before
    r["cpu_us_per_request"] = used / max(r["rps"] * seconds, 1) * 1e6
    r["cpu_cores"] = used / seconds
    return r


def _children(pid: int) -> list[int]:
    """Process ids of every descendant of `pid`."""
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def profile(pid: int, url: str, script: Path, seconds: int, work: Path) -> dict:
    """py-spy over the busiest service process while wrk drives PROFILE_CLIENTS clients: the share
    of samples per bucket, and that process's CPU time per answered request to spread over them."""
    raw = work / "profile.txt"
    pids = [p for p in [pid, *_children(pid)]]
    target = max(pids, key=_cpu_seconds)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(target),
            "--format",
            "raw",
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--output",
            str(raw),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    before = _cpu_seconds(target)
    r = run_wrk(url, script, PROFILE_CLIENTS, seconds - 2)
    used = _cpu_seconds(target) - before
    spy.wait(60)
    shares = summarize_profile(raw.read_text()) if raw.exists() else []
    return {
        "clients": PROFILE_CLIENTS,
        "cpu_us_per_request": used / max(r["rps"] * (seconds - 2), 1) * 1e6,
        "shares": shares,
    }


PROFILE_CLIENTS = 16


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far (0 once it is gone)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


# (bucket, frame keys): a key is a substring of the frame ("function (file:line)"), or
# "function@file" for one function of one file
BUCKETS = [
    ("ONNX Runtime inference", ("onnxruntime", "run@runtime.py", "infer@fastlane.py")),
    ("nnship validation", ("validation.py",)),
    ("metrics (prometheus_client)", ("prometheus_client", "metrics.py", "instruments.py")),
    ("nnship answer building", ("answer@service.py", "numeric.py")),
    (
        "adaptive batching and its thread hand-off",
        ("batching.py", "concurrent/futures", "threading"),
    ),
    ("pydantic / BentoML request parsing", ("io_models.py", "pydantic", "serde.py")),
    ("JSON encoding and response", ("json", "responses.py", "encoding.py")),
    ("nnship guard", ("security.py",)),
    ("nnship /predict lane", ("fastlane.py", "endpoint.py")),
    (
        "BentoML / Starlette / OpenTelemetry middleware",
        (
            "_bentoml_impl",
            "bentoml/_internal",
            "starlette",
            "opentelemetry",
            "pathlabels.py",
            "timeouts.py",
            "concurrency.py",
        ),
    ),
    ("HTTP protocol (uvicorn, h11 / httptools)", ("h11", "httptools", "uvicorn", "connections.py")),
    ("asyncio event loop", ("asyncio", "selectors")),
]


def _matches(key: str, frame: str) -> bool:
    if "@" not in key:
        return key in frame
    function, file = key.split("@")
    return frame.startswith(function + " (") and file in frame


def summarize_profile(text: str) -> list[tuple[str, float]]:
    """Attribute each sampled stack to the first bucket its innermost frames match (leaf first);
    py-spy leaves out the samples of threads it sees idle (an epoll wait, a thread waiting for
    work)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        bucket = "idle / other"
        for frame in reversed(frames):
            hit = next(
                (name for name, keys in BUCKETS if any(_matches(k, frame) for k in keys)), None
            )
            if hit:
                bucket = hit
                break
        counts[bucket] += int(n)
    return [(k, v / total) for k, v in counts.most_common()] if total else []


def prepare_models(home: Path) -> dict[str, str]:
    """Train and export the two models; returns name -> data set."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.training.train import TrainConfig, train

    os.environ["BENTOML_HOME"] = str(home)
    runs = home / "runs"
    train(TrainConfig(model="cnn", dataset="digits", out=str(runs / "digits-cnn")))
    export_run(ExportOptions(str(runs / "digits-cnn"), name="digits-cnn"))
    train(
        TrainConfig(
            model="mlp",
            dataset="digits",
            epochs=1,
            model_config=HEAVY_CONFIG,
            out=str(runs / "heavy"),
        )
    )
    export_run(ExportOptions(str(runs / "heavy"), name="digits-heavy", variants=("fp32",)))
    return {"digits-cnn": "digits", "digits-heavy": "digits"}


def bench_model(
    model: str, dataset: str, home: Path, seconds: int, work: Path, compare_routes: bool = False
) -> dict:
    bodies = predict_bodies(dataset, 64)
    script = lua_script(bodies, work / f"{model}.lua")
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "_PROBE": bodies[0]}
    threads = str(os.cpu_count() or 1)
    results: dict[str, dict] = {}
    service = [sys.executable, "-m", "bentoml", "serve", "nnship.service.service:NnshipService"]
    service_env = {"NNSHIP_MODEL": f"{model}:latest", "NNSHIP_WORKERS": "1"}
    baseline = [sys.executable, "-m", "nnship.loadtests.baseline"]
    model_args = [f"{model}:latest", "--port", "{port}", "--threads", threads]
    servers = {
        "nnship": ([*service, "--port", "{port}"], service_env, "/readyz"),
        # the same service with /predict through BentoML's stack and API layer: what the lane saves
        "nnship-bentoml-route": (
            [*service, "--port", "{port}"],
            {**service_env, "NNSHIP_PREDICT_ROUTE": "bentoml"},
            "/readyz",
        ),
        "bare": ([*baseline, "bare", *model_args], {}, "/predict"),
        "naive": ([*baseline, "naive", *model_args], {}, "/predict"),
        "echo": (
            [*baseline, "echo", "--port", "{port}"],
            {},
            "/predict",
        ),
    }
    if not compare_routes:
        del servers["nnship-bentoml-route"]
    for name, (cmd, extra, ready) in servers.items():
        profiled = name == "nnship" or (compare_routes and name == "bare")
        clients = CONCURRENCY
        if name == "nnship" and model == "digits-heavy":  # how batches grow with more clients
            clients = (*CONCURRENCY, 2 * WIDE)
        results[name] = _bench_server(
            cmd, {**env, **extra}, ready, script, seconds, work, name, clients, profiled
        )
        print(
            f"{model} {name}: "
            + ", ".join(f"c{c} {results[name][c]['rps']:.0f} rps" for c in CONCURRENCY),
            flush=True,
        )
    for name in TWO_WORKERS:  # the same servers with two worker processes, at WIDE clients only
        cmd, extra, ready = servers[name]
        if name == "nnship":
            extra = {**extra, "NNSHIP_WORKERS": "2"}
        else:
            cmd = [*cmd, "--workers", "2"]
        cells = _bench_server(cmd, {**env, **extra}, ready, script, seconds, work, "", (WIDE,))
        results[f"{name} (2 workers)"] = cells
        print(f"{model} {name} (2 workers): c{WIDE} {cells[WIDE]['rps']:.0f} rps", flush=True)
    return results


def _bench_server(
    cmd: list[str],
    env: dict[str, str],
    ready: str,
    script: Path,
    seconds: int,
    work: Path,
    name: str,
    clients: tuple[int, ...] = CONCURRENCY,
    profiled: bool = False,
) -> dict:
    """One server started, warmed and measured at each number of clients, then profiled if asked
    (nnship: its shed requests and mean batch read from /metrics)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _server([c.replace("{port}", str(port)) for c in cmd], env, url, ready) as proc:
        run_wrk(url, script, 16, 2)  # warm the path
        pids = [proc.pid, *_children(proc.pid)]
        result: dict = {}
        for c in clients:
            before = _batch_totals(_metrics(url)) if name == "nnship" else None
            result[c] = measure(url, script, c, seconds, pids)
            if before is not None:  # the rows per inference batch while this cell ran
                result[c]["mean_batch"] = _mean_batch(_batch_totals(_metrics(url)), before)
        if profiled:
            result["profile"] = profile(proc.pid, url, script, max(6, seconds), work)
        if name == "nnship":
            metrics = _metrics(url)
            result["shed"] = sum(
                float(v)
                for v in re.findall(
                    r'^bentoml_service_request_total\{[^}]*http_response_code="503"[^}]*\} ([\d.e+]+)$',
                    metrics,
                    re.M,
                )
            )
            result["mean_batch"] = _mean_batch(_batch_totals(metrics))
    return result


def _metrics(url: str) -> str:
    """A server's /metrics text."""
    return httpx.get(f"{url}/metrics", timeout=10).text


def _batch_totals(text: str) -> tuple[float, float]:
    """nnship's rows inferred and inference calls so far (nnship_batch_size's sum and count), from
    its /metrics text."""
    found = dict(re.findall(r"^nnship_batch_size_(sum|count)\{[^}]*\} ([\d.e+]+)$", text, re.M))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def _mean_batch(totals: tuple[float, float], since: tuple[float, float] = (0.0, 0.0)) -> float:
    """Rows per inference call between two readings of the batch totals."""
    return (totals[0] - since[0]) / max(totals[1] - since[1], 1)


BATCH_SIZES = (1, 8, 16, 32, 64, 128)


def batch_costs(model: str, threads: int) -> dict[int, float]:
    """CPU µs per row of the served variant, in this process, by batch size: one ONNX Runtime call
    per batch of real rows, with the served thread count (what batching saves, before HTTP)."""
    import numpy as np

    from nnship.loadtests.rows import test_rows
    from nnship.service.runtime import load_runtime
    from nnship.service.settings import Settings

    rt = load_runtime(Settings(model=f"{model}:latest", threads=threads))
    rows = np.asarray(test_rows("digits", max(BATCH_SIZES)), dtype=np.float32)
    rows = rows.reshape(len(rows), *rt.manifest.input.shape)
    costs = {}
    for b in BATCH_SIZES:
        x = rows[:b]
        rt.run(x)  # warm-up
        calls = max(4, 256 // b)
        began = time.process_time()
        for _ in range(calls):
            rt.run(x)
        costs[b] = (time.process_time() - began) / (calls * b) * 1e6
    return costs


def _cost_at(costs: dict[int, float], batch: float) -> float:
    """CPU µs per row at a mean batch size, interpolated on the measured sizes."""
    sizes = sorted(costs)
    if batch <= sizes[0]:
        return costs[sizes[0]]
    for lo, hi in itertools.pairwise(sizes):
        if batch <= hi:
            return costs[lo] + (costs[hi] - costs[lo]) * (batch - lo) / (hi - lo)
    return costs[sizes[-1]]


def _heavy_gap(h: dict, costs: dict[int, float], goal: float = 6.0) -> list[str]:
    """Why the heavy model's ratio stands where it does: its batch cost curve and the arithmetic."""
    n, bare = h["nnship"][WIDE], h["bare"][WIDE]
    batch = n.get("mean_batch", 0.0)
    infer = _cost_at(costs, batch)
    rest = n["cpu_us_per_request"] - infer
    needed_rps = goal * bare["rps"]
    budget = n["cpu_cores"] / needed_rps * 1e6  # µs per request at the cores nnship used
    allowed = budget - rest
    fits = [b for b in sorted(costs) if costs[b] <= allowed]
    need = (
        f"batches of about {fits[0]} rows or more"
        if fits
        else f"more than the {max(costs)}-row batches measured (or less work outside inference)"
    )
    curve = ", ".join(f"{b}: {costs[b]:,.0f}" for b in sorted(costs))
    more = ""
    wider = h["nnship"].get(2 * WIDE)
    if wider:
        more = (
            f"More clients fill larger batches: at {2 * WIDE} clients nnship served "
            f"{wider['rps']:,.0f} req/s in batches of {wider.get('mean_batch', 0):.1f} rows "
            f"({wider['rps'] / bare['rps']:.2f}x bare's {WIDE}-client figure). "
        )
    return [
        f"## Why digits-heavy stops at {n['rps'] / bare['rps']:.2f}x bare ({WIDE} clients)",
        "",
        f"ONNX Runtime's CPU per row for this model, measured in this run in-process with the served "
        f"thread count, by batch size (rows: µs): {curve}. At {WIDE} clients bare runs one row per "
        f"call ({bare['rps']:,.0f} req/s); nnship's batches held {batch:.1f} rows on average in that "
        f"cell, so its inference costs about {infer:,.0f} µs a row, and the rest of its "
        f"{n['cpu_us_per_request']:,.0f} µs of server CPU per request (HTTP, event loop, lane, "
        f"validation, batching) about {rest:,.0f} µs. {goal:g}x bare is {needed_rps:,.0f} req/s; on "
        f"the {n['cpu_cores']:.2f} cores the server used, that leaves {budget:,.0f} µs a request, "
        f"so inference would have to cost at most {max(allowed, 0):,.0f} µs a row: {need}.",
        "",
        f"Why the batches hold about half the clients: each of the {WIDE} clients has one "
        "request outstanding, and the event loop reads the next requests while ONNX Runtime runs "
        "the current batch, so the clients settle into two alternating groups and a batch holds "
        f"about {WIDE // 2} requests (measured: {batch:.1f}). Batches of {WIDE} would need every "
        "client in every batch, that is no overlap at all: the event loop idle during each "
        "inference call and ONNX Runtime idle while the loop reads. Holding batches back for more "
        "rows (`NNSHIP_MAX_WAIT_MS` 1 and 3 ms), a single ONNX Runtime thread, a 32-row cap and a "
        "lower priority for the inference thread were each measured at or below the default. "
        f"{more}At this bar's concurrency, cheaper request handling (the HTTP share above) is "
        "what would raise it.",
        "",
    ]


def _profile_table(prof: dict) -> list[str]:
    """Share of samples and CPU µs per request, per bucket."""
    cpu = prof.get("cpu_us_per_request", 0.0)
    rows = ["| where | share of samples | µs of CPU per request |", "| --- | --- | --- |"]
    rows += [f"| {k} | {v:.1%} | {v * cpu:,.0f} |" for k, v in prof.get("shares", [])]
    return [*rows, f"| all (the profiled worker) | 100% | {cpu:,.0f} |"]


def _bucket_us(prof: dict, bucket: str) -> float:
    """CPU µs per request of one profile bucket."""
    return dict(prof.get("shares", [])).get(bucket, 0.0) * prof.get("cpu_us_per_request", 0.0)


# the profile buckets of work nnship does per request that the bare app does not
NNSHIP_OWN = (
    "nnship /predict lane",
    "nnship validation",
    "adaptive batching and its thread hand-off",
    "nnship guard",
    "metrics (prometheus_client)",
    "BentoML / Starlette / OpenTelemetry middleware",
    "pydantic / BentoML request parsing",
)


def _remains(after: dict, bare: dict, d: dict | None = None) -> str:
    """What is left between nnship and bare, from the two profiles."""
    http = "HTTP protocol (uvicorn, h11 / httptools)"
    loop = "asyncio event loop"
    infer = "ONNX Runtime inference"
    shared = [_bucket_us(p, http) + _bucket_us(p, loop) for p in (after, bare)]
    own = sum(_bucket_us(after, b) for b in NNSHIP_OWN)
    saved = _bucket_us(bare, infer) - _bucket_us(after, infer)
    gap = ""
    if d is not None:
        n, b = d["nnship"][WIDE], d["bare"][WIDE]
        gap = (
            f"At {WIDE} clients nnship spends {n['cpu_us_per_request']:,.0f} µs of server CPU a "
            f"request and bare {b['cpu_us_per_request']:,.0f} µs, hence "
            f"{n['rps'] / b['rps']:.2f}x its throughput. In the profiles, the work bare does not do "
            f"at all (the lane, guard, validation, batching, metrics, middleware) costs nnship "
            f"{own:,.0f} µs a request, while batching saves {saved:,.0f} µs of inference a request "
            f"(bare {_bucket_us(bare, infer):,.0f} µs, nnship {_bucket_us(after, infer):,.0f} µs): "
            "on a model this small, one row costs less to infer than nnship's checks and "
            "bookkeeping cost to run, so batching alone cannot pay for them. "
        )
    return gap + (
        "What remains: the HTTP protocol and the event loop (socket reads and writes, h11's parsing "
        f"and framing) take {shared[0]:,.0f} µs of each nnship request and {shared[1]:,.0f} µs "
        "of each bare one: the largest cost, and one both pay alike, since both serve with "
        f"{PROTOCOL_NAME} (uvicorn's h11 protocol under nnship's head deadline, connection cap and "
        "drain; httptools is not a dependency, so uvicorn's automatic choice is h11). Switching "
        "both to httptools would lower that share for both; it would mean rebuilding those "
        "protections on httptools' protocol class and is not done here. What nnship adds on top "
        "(the guard, metrics, validation, batching) is what the lane, the loop-side batches and "
        "the parsing changes above cut down."
    )


def _profile_before() -> dict:
    """The profile recorded before the fast /predict path, if its file is there."""
    try:
        return json.loads(PROFILE_BEFORE.read_text())
    except (OSError, ValueError):
        return {}


def render(
    all_results: dict, seconds: int, v2: dict | None = None, costs: dict | None = None
) -> tuple[str, bool]:
    lines = [
        "| model | server | clients | req/s | p50 ms | p99 ms | errors | server CPU µs / request |",
        "| --- " * 8 + "|",
    ]
    for model, res in all_results.items():
        cells = [(s, c) for s in SERVERS if s in res for c in CONCURRENCY]
        cells += [(f"{s} (2 workers)", WIDE) for s in TWO_WORKERS if f"{s} (2 workers)" in res]
        for server, c in cells:
            r = res[server][c]
            lines.append(
                f"| {model} | {server} | {c} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['errors']} | {r['cpu_us_per_request']:,.0f} |"
            )
    d, h = all_results["digits-cnn"], all_results["digits-heavy"]
    checks = [
        (
            f"zero errors at {WIDE} clients (nnship, both models)",
            d["nnship"][WIDE]["errors"] == 0 and h["nnship"][WIDE]["errors"] == 0,
            f"{d['nnship'][WIDE]['errors']} / {h['nnship'][WIDE]['errors']}",
        ),
        (
            "zero shed (503) requests",
            d["nnship"]["shed"] == 0 and h["nnship"]["shed"] == 0,
            f"{d['nnship']['shed']:.0f} / {h['nnship']['shed']:.0f}",
        ),
        (
            f"digits-cnn, {WIDE} clients: nnship >= 1.0x bare throughput",
            d["nnship"][WIDE]["rps"] >= d["bare"][WIDE]["rps"],
            f"{d['nnship'][WIDE]['rps'] / d['bare'][WIDE]['rps']:.2f}x",
        ),
        (
            "digits-cnn, 1 client: nnship p50 within 0.3 ms of bare",
            d["nnship"][1]["p50_ms"] - d["bare"][1]["p50_ms"] <= 0.3,
            f"{d['nnship'][1]['p50_ms']:.2f} ms vs {d['bare'][1]['p50_ms']:.2f} ms",
        ),
        (
            f"digits-heavy, {WIDE} clients: nnship >= 6x bare throughput",
            h["nnship"][WIDE]["rps"] >= 6 * h["bare"][WIDE]["rps"],
            f"{h['nnship'][WIDE]['rps'] / h['bare'][WIDE]['rps']:.2f}x",
        ),
    ]
    if v2:
        checks.append(
            (
                "v2, 256-row requests: binary tensor data >= 3x the rows/s of JSON (each model)",
                all(r["ratio"] >= 3 for r in v2.values()),
                ", ".join(f"{m} {r['ratio']:.2f}x" for m, r in v2.items()),
            )
        )
    ok = all(c[1] for c in checks)
    scaling = []
    for model, res in all_results.items():
        for server in TWO_WORKERS:
            two = res.get(f"{server} (2 workers)")
            if two is not None:
                one = res[server][WIDE]
                scaling.append(
                    f"{model} {server}: {one['rps']:,.0f} -> {two[WIDE]['rps']:,.0f} req/s "
                    f"({two[WIDE]['rps'] / one['rps']:.2f}x)"
                )
    before = _profile_before()
    after = d["nnship"].get("profile", {})
    text = "\n".join(
        [
            "# Serving benchmark",
            "",
            f"One worker process per server on {os.cpu_count()} cores (plus the two-worker rows), ONNX "
            "Runtime with the same threads and options on every inference server (no spinning); wrk "
            f"drives single-row POST /predict requests with real test-split rows for {seconds} s per "
            "cell, on the same cores. `nnship` is the BentoML service with adaptive batching; `bare` is "
            "a raw ASGI callable doing one ONNX Runtime call per request (orjson in and out, no "
            f"framework, no batching) served by uvicorn with the HTTP protocol nnship uses ({PROTOCOL_NAME}); "
            "`naive` is the same work on Starlette with the standard json module; `echo` is that "
            "Starlette stack parsing the JSON and answering without inference (the ceiling of the HTTP "
            "layer). Reproduce: `python -m nnship.loadtests.benchmark`.",
            "",
            "Mean rows per inference batch formed by nnship's batcher, over the whole run and at "
            f"{WIDE} clients: digits-cnn {d['nnship']['mean_batch']:.1f} and "
            f"{d['nnship'][WIDE].get('mean_batch', 0):.1f}, digits-heavy "
            f"{h['nnship']['mean_batch']:.1f} and {h['nnship'][WIDE].get('mean_batch', 0):.1f}.",
            "",
            "| bar | result | measured |",
            "| --- | --- | --- |",
            *[
                f"| {name} | {'pass' if passed else 'FAIL'} | {figure} |"
                for name, passed, figure in checks
            ],
            "",
            *lines,
            "",
            "`nnship-bentoml-route` is the same service with `NNSHIP_PREDICT_ROUTE=bentoml`: /predict through "
            "BentoML's middleware, router and per-API layer instead of nnship's /predict lane "
            f"(`service/fastlane.py`). At {WIDE} clients: {d['nnship'][WIDE]['rps']:,.0f} vs "
            f"{d['nnship-bentoml-route'][WIDE]['rps']:,.0f} req/s, "
            f"{d['nnship'][WIDE]['cpu_us_per_request']:,.0f} vs "
            f"{d['nnship-bentoml-route'][WIDE]['cpu_us_per_request']:,.0f} µs of server CPU per request "
            f"(bare: {d['bare'][WIDE]['cpu_us_per_request']:,.0f} µs, naive: "
            f"{d['naive'][WIDE]['cpu_us_per_request']:,.0f} µs, echo: "
            f"{d['echo'][WIDE]['cpu_us_per_request']:,.0f} µs).",
            "",
            f"Two workers, {WIDE} clients: " + "; ".join(scaling) + ". wrk runs on the same "
            f"{os.cpu_count()} cores and takes a large share of them, so a second worker mostly "
            "competes with the load generator and the other worker for CPU: these rows show what a "
            "second process costs or gains on a saturated machine, not how the service scales on "
            "cores of its own.",
            "",
            "Serving choices behind these figures: POST /predict answered by one ASGI layer outside "
            "BentoML's middleware (`service/fastlane.py`: the same guard, concurrency limit, timeout "
            "and BentoML request metrics, done in one place), a fast model's batches run on the event "
            "loop (no hand-off to a thread and back), a slow model's in nnship's inference thread "
            "(the loop reads requests meanwhile), orjson request parsing, "
            "ONNX Runtime without thread spinning (idle pool threads busy-waiting stole the event "
            "loop's core), and BentoML's tracing spans and access log off by default "
            "(`NNSHIP_TRACING`, `NNSHIP_ACCESS_LOG`; either puts /predict back through BentoML's "
            "stack).",
            "",
            f"## Where the time goes (py-spy, digits-cnn, one worker, {after.get('clients', PROFILE_CLIENTS)} clients)",
            "",
            "Each sampled stack is attributed to the innermost frame that matches a bucket (py-spy "
            "leaves out threads it sees idle); the µs column spreads the profiled process's CPU time "
            "per answered request (psutil, over the same window) by those shares. The inference "
            "thread's samples count too; ONNX Runtime's own pool threads are not sampled but their "
            "CPU is in the total.",
            "",
            "### nnship, after",
            "",
            *_profile_table(after),
            "",
            "### bare, same run",
            "",
            *_profile_table(d["bare"].get("profile", {})),
            "",
            *(
                [
                    f"### nnship, before (commit {before.get('commit', '?')})",
                    "",
                    before.get("note", ""),
                    "",
                    *_profile_table(before),
                    "",
                ]
                if before
                else []
            ),
            _remains(after, d["bare"].get("profile", {}), d),
            "",
            *(_heavy_gap(h, costs["digits-heavy"]) if costs and "digits-heavy" in costs else []),
        ]
    )
    return text, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measurement cell")
    p.add_argument("--report", default="reports/serving-benchmark.md")
    p.add_argument(
        "--v2-encodings",
        action="store_true",
        help="only measure v2 JSON vs binary tensor data (rows/s, CPU per row) and update that "
        "section",
    )
    args = p.parse_args(argv)
    report = Path(args.report)
    if args.v2_encodings:
        from nnship.loadtests import v2encodings

        if shutil.which("wrk") is None:
            print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
            return 2

        with tempfile.TemporaryDirectory() as tmp:
            section = v2encodings.render(v2encodings.run(Path(tmp) / "bentoml"))
        print(section)
        text = v2encodings.upsert(report, section)
        atomic_write(report, lambda f: f.write_text(text))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    from nnship.loadtests import v2encodings

    with tempfile.TemporaryDirectory() as tmp:
        home, work = Path(tmp) / "bentoml", Path(tmp)
        models = prepare_models(home)
        results = {
            m: bench_model(m, ds, home, args.duration, work, compare_routes=m == "digits-cnn")
            for m, ds in models.items()
        }
        # in this process with no server running: each model's CPU per row by batch size
        costs = {m: batch_costs(m, os.cpu_count() or 1) for m in models}
        v2 = v2encodings.run(home, digits_stored=True)
    text, ok = render(results, args.duration, v2, costs)
    results["batch-costs"] = costs
    results["v2-encodings"] = v2
    text = text.rstrip("\n") + "\n\n" + v2encodings.render(v2) + "\n"
    print(text)
    report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(report, lambda f: f.write_text(text))
    atomic_write(
        report.with_suffix(".json"),
        lambda f: f.write_text(json.dumps(results, indent=1, default=str)),
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
