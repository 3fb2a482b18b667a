"""Serving benchmark: the nnship service vs a naive ONNX Runtime app vs the same stack's echo.

    python -m nnship.loadtests.benchmark [--duration 10] [--report reports/serving-benchmark.md]
    python -m nnship.loadtests.benchmark --v2-encodings   # only the v2 JSON-vs-binary section

Trains and exports two models into a temporary BentoML home (the default digits cnn, and a
compute-heavy wide mlp), serves each three ways with one worker process each, drives them with wrk at
1, 16 and 64 concurrent single-row clients, profiles the nnship worker with py-spy, and writes a report.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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

CONCURRENCY = (1, 16, 64)
SERVERS = ("nnship", "nnship-bentoml-route", "naive", "echo")
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


def profile(pid: int, url: str, script: Path, seconds: int, work: Path) -> list[tuple[str, float]]:
    """py-spy over the service's processes while wrk drives 16 clients: share of samples per frame."""
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
    run_wrk(url, script, 16, seconds - 2)
    spy.wait(60)
    if not raw.exists():
        return []
    return summarize_profile(raw.read_text())


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far (0 once it is gone)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


BUCKETS = [
    ("ONNX Runtime inference", ("onnxruntime", "runtime.py:run")),
    ("nnship validation", ("validation.py",)),
    ("nnship answer building / metrics", ("service.py:answer", "prometheus_client")),
    ("adaptive batching", ("batching.py", "dispatcher.py")),
    ("pydantic / BentoML request parsing", ("io_models.py", "pydantic", "serde.py")),
    ("JSON encoding and response", ("json", "responses.py")),
    (
        "BentoML / Starlette / OpenTelemetry middleware",
        (
            "_bentoml_impl",
            "bentoml/_internal",
            "starlette",
            "opentelemetry",
            "security.py",
            "endpoint.py",
        ),
    ),
    ("uvicorn / asyncio / HTTP parsing", ("uvicorn", "asyncio", "h11", "httptools", "selectors")),
]


def summarize_profile(text: str) -> list[tuple[str, float]]:
    """Attribute each sampled stack to the first bucket its innermost frames match (leaf first)."""
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
            hit = next((name for name, keys in BUCKETS if any(k in frame for k in keys)), None)
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
    servers = {
        "nnship": ([*service, "--port", "{port}"], service_env, "/readyz"),
        # the same service with /predict through BentoML's API layer: what the ASGI endpoint saves
        "nnship-bentoml-route": (
            [*service, "--port", "{port}"],
            {**service_env, "NNSHIP_PREDICT_ROUTE": "bentoml"},
            "/readyz",
        ),
        "naive": (
            [
                sys.executable,
                "-m",
                "nnship.loadtests.baseline",
                "naive",
                f"{model}:latest",
                "--port",
                "{port}",
                "--threads",
                threads,
            ],
            {},
            "/predict",
        ),
        "echo": (
            [sys.executable, "-m", "nnship.loadtests.baseline", "echo", "--port", "{port}"],
            {},
            "/predict",
        ),
    }
    if not compare_routes:
        del servers["nnship-bentoml-route"]
    for name, (cmd, extra, ready) in servers.items():
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with _server(
            [c.replace("{port}", str(port)) for c in cmd], {**env, **extra}, url, ready
        ) as proc:
            run_wrk(url, script, 16, 2)  # warm the path
            pids = [proc.pid, *_children(proc.pid)]
            results[name] = {c: measure(url, script, c, seconds, pids) for c in CONCURRENCY}
            if name == "nnship":
                results[name]["profile"] = profile(proc.pid, url, script, max(6, seconds), work)
                metrics = httpx.get(f"{url}/metrics").text
                results[name]["shed"] = sum(
                    float(v)
                    for v in re.findall(
                        r'^bentoml_service_request_total\{[^}]*http_response_code="503"[^}]*\} ([\d.e+]+)$',
                        metrics,
                        re.M,
                    )
                )
                sizes = re.findall(
                    r"^nnship_batch_size_(sum|count)\{[^}]*\} ([\d.e+]+)$", metrics, re.M
                )
                agg = {k: float(v) for k, v in sizes}
                results[name]["mean_batch"] = agg.get("sum", 0) / max(agg.get("count", 1), 1)
        print(
            f"{model} {name}: "
            + ", ".join(f"c{c} {results[name][c]['rps']:.0f} rps" for c in CONCURRENCY),
            flush=True,
        )
    return results


def render(all_results: dict, seconds: int) -> tuple[str, bool]:
    lines = [
        "| model | server | clients | req/s | p50 ms | p99 ms | errors | server CPU µs / request |",
        "| --- " * 8 + "|",
    ]
    for model, res in all_results.items():
        for server in [s for s in SERVERS if s in res]:
            for c in CONCURRENCY:
                r = res[server][c]
                lines.append(
                    f"| {model} | {server} | {c} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                    f"| {r['errors']} | {r['cpu_us_per_request']:,.0f} |"
                )
    d, h = all_results["digits-cnn"], all_results["digits-heavy"]
    checks = [
        (
            "zero errors at 64 clients (nnship, both models)",
            d["nnship"][64]["errors"] == 0 and h["nnship"][64]["errors"] == 0,
            f"{d['nnship'][64]['errors']} / {h['nnship'][64]['errors']}",
        ),
        (
            "zero shed (503) requests",
            d["nnship"]["shed"] == 0 and h["nnship"]["shed"] == 0,
            f"{d['nnship']['shed']:.0f} / {h['nnship']['shed']:.0f}",
        ),
        (
            "heavy model, 64 clients: nnship >= 2x naive throughput",
            h["nnship"][64]["rps"] >= 2 * h["naive"][64]["rps"],
            f"{h['nnship'][64]['rps'] / h['naive'][64]['rps']:.2f}x",
        ),
        (
            "digits-cnn, 64 clients: nnship >= 0.5x naive throughput",
            d["nnship"][64]["rps"] >= 0.5 * d["naive"][64]["rps"],
            f"{d['nnship'][64]['rps'] / d['naive'][64]['rps']:.2f}x",
        ),
        (
            "digits-cnn, 1 client: nnship p50 within 1.5 ms of naive",
            d["nnship"][1]["p50_ms"] - d["naive"][1]["p50_ms"] <= 1.5,
            f"{d['nnship'][1]['p50_ms']:.2f} ms vs {d['naive'][1]['p50_ms']:.2f} ms",
        ),
    ]
    ok = all(c[1] for c in checks)
    prof = ["| where | share of samples |", "| --- | --- |"]
    prof += [f"| {k} | {v:.1%} |" for k, v in d["nnship"].get("profile", [])]
    text = "\n".join(
        [
            "# Serving benchmark",
            "",
            f"One worker process per server on {os.cpu_count()} cores, ONNX Runtime with the same threads on both "
            f"inference servers; wrk drives single-row POST /predict requests with real test-split rows for {seconds} s "
            "per cell. `nnship` is the BentoML service with adaptive batching; `naive` is plain uvicorn + Starlette "
            "doing one ONNX Runtime call per request; `echo` is that same stack parsing the JSON and answering without "
            "inference (the ceiling of the HTTP layer). Reproduce: `python -m nnship.loadtests.benchmark`.",
            "",
            f"Mean rows per inference batch formed by nnship's batcher: digits-cnn {d['nnship']['mean_batch']:.1f}, "
            f"digits-heavy {h['nnship']['mean_batch']:.1f} (over the whole run).",
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
            "BentoML's router and per-API layer instead of nnship's ASGI endpoint (`service/endpoint.py`), which "
            "answers it behind BentoML's traffic metrics, concurrency limit and timeout and nnship's guard. At 64 "
            f"clients: {d['nnship'][64]['rps']:,.0f} vs {d['nnship-bentoml-route'][64]['rps']:,.0f} req/s, "
            f"{d['nnship'][64]['cpu_us_per_request']:,.0f} vs "
            f"{d['nnship-bentoml-route'][64]['cpu_us_per_request']:,.0f} µs of server CPU per request "
            f"(naive: {d['naive'][64]['cpu_us_per_request']:,.0f} µs, echo: "
            f"{d['echo'][64]['cpu_us_per_request']:,.0f} µs).",
            "",
            "Serving choices behind these figures: nnship's own adaptive batcher (dispatch as soon as the model is "
            "free, no polling), ONNX Runtime without thread spinning (idle pool threads busy-waiting stole the event "
            "loop's core), a request timeout that cancels its timer (BentoML's leaves one per request on the loop), "
            "and BentoML's tracing spans and access log off by default (`NNSHIP_TRACING`, `NNSHIP_ACCESS_LOG`).",
            "",
            "## Where the time goes (py-spy, nnship worker, digits-cnn, 16 clients)",
            "",
            "Each sampled stack is attributed to the innermost frame that matches a bucket.",
            "",
            *prof,
            "",
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
    with tempfile.TemporaryDirectory() as tmp:
        home, work = Path(tmp) / "bentoml", Path(tmp)
        models = prepare_models(home)
        results = {
            m: bench_model(m, ds, home, args.duration, work, compare_routes=m == "digits-cnn")
            for m, ds in models.items()
        }
    text, ok = render(results, args.duration)
    print(text)
    from nnship.loadtests import v2encodings

    text = v2encodings.keep(report, text)  # the v2 section is measured on its own
    report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(report, lambda f: f.write_text(text))
    atomic_write(
        report.with_suffix(".json"),
        lambda f: f.write_text(json.dumps(results, indent=1, default=str)),
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
