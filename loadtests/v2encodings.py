"""Rows per second of 256-row v2 inference requests sent as JSON and as binary tensor data (what
tritonclient sends by default), with concurrent clients, on a small iris model and the serving
benchmark's two digits models (64 values a row), each served by one worker.

    python -m nnship.loadtests.benchmark --v2-encodings [--report reports/serving-benchmark.md]

wrk drives each model with CLIENTS keep-alive connections sending the same request for SECONDS after
a warm-up: JSON data with JSON outputs, or binary data with binary outputs. Besides wrk's figures,
the worker's CPU time (user + system, from psutil) and its ONNX Runtime time (the
`nnship_inference_seconds` and `nnship_batch_size` sums in /metrics) over the run, each divided by
the rows answered, split a row's cost into inference and everything else. The section it writes
replaces the one between its markers in the report and leaves the rest as it is.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from nnship.loadtests.benchmark import _free_port, _server
from nnship.loadtests.wrk import run_wrk

ROWS = 256
CLIENTS = 8
ROUNDS = 3
SECONDS = 5  # per run
WARM_UP_S = 3
GOAL = 3.0  # binary rows/s over JSON rows/s
KINDS = ("JSON", "binary")
BEGIN, END = "<!-- v2-encodings:begin -->", "<!-- v2-encodings:end -->"


def bodies(x: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The same rows as a JSON request with JSON outputs (flat data, as tritonclient writes it),
    and as a binary one with binary outputs."""
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    as_json = {"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]}
    data = x.astype("<f4").tobytes()
    binary = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(binary).encode()
    return {
        "JSON": (json.dumps(as_json).encode(), {"Content-Type": "application/json"}),
        "binary": (
            header + data,
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            },
        ),
    }


def lua(body: Path, headers: dict[str, str], path: Path) -> Path:
    """A wrk script posting the bytes of `body` (read at start-up: binary data has no safe Lua
    literal) with `headers`."""
    lines = ['wrk.method = "POST"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines += [
        f"local f = assert(io.open({json.dumps(str(body))}, 'rb'))",
        "wrk.body = f:read('*a')",
        "f:close()",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, script: Path, seconds: int, parse: bool = True) -> dict[str, float]:
    """wrk's figures for CLIENTS connections over two threads (a long timeout: a request of the
    heavy model takes a large fraction of a second); `parse=False` for a warm-up, which may end
    before any answer."""
    try:
        return run_wrk(url, script, CLIENTS, seconds, seconds + 120, 60, parse)
    except ValueError as e:
        raise RuntimeError(f"wrk against {url}: {e}") from None


def worker_cpu(server_pid: int) -> float:
    """CPU seconds (user + system) of the server's worker processes so far."""
    total = 0.0
    for p in psutil.Process(server_pid).children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def inference_totals(url: str) -> tuple[float, float]:
    """(seconds in ONNX Runtime, rows inferred) so far, summed over /metrics' series."""
    text = httpx.get(f"{url}/metrics", timeout=30).text

    def total(family: str) -> float:
        pattern = rf"^{family}_sum(?:\{{[^}}]*\}})? ([\d.e+-]+)$"
        return sum(float(v) for v in re.findall(pattern, text, re.M))

    return total("nnship_inference_seconds"), total("nnship_batch_size")


def check(url: str, model: str, kind: str, body: bytes, headers: dict[str, str], rows: int) -> None:
    """One request, its answer checked: wrk counts any 2xx, not a correct answer."""
    r = httpx.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers, timeout=60)
    r.raise_for_status()
    if kind == "binary":
        n = int(r.headers["inference-header-content-length"])
        outputs = json.loads(r.content[:n])["outputs"]
        sizes = sum(o["parameters"]["binary_data_size"] for o in outputs)
        ok = len(r.content) == n + sizes and outputs[0]["shape"][0] == rows
    else:
        outputs = r.json()["outputs"]
        ok = all(len(o["data"]) == rows * o["shape"][1] for o in outputs)
    if not ok:
        raise RuntimeError(f"{model} {kind}: the answer does not hold {rows} rows of every output")


def one_run(url: str, target: str, script: Path, server_pid: int) -> dict[str, float]:
    """One wrk run of SECONDS with the worker's CPU seconds and ONNX Runtime seconds and rows."""
    cpu, (infer_s, infer_rows) = worker_cpu(server_pid), inference_totals(url)
    r = wrk(target, script, SECONDS)
    after_s, after_rows = inference_totals(url)
    r["cpu_s"] = worker_cpu(server_pid) - cpu
    r["infer_s"], r["infer_rows"] = after_s - infer_s, after_rows - infer_rows
    return r


def measure(url: str, model: str, server_pid: int, x: np.ndarray, work: Path) -> dict[str, Any]:
    """ROUNDS rounds of one run per kind, back to back (load from anything else on the machine
    weighs on both kinds of a round alike): per kind the median round's rows/s and latency, and
    worker CPU and inference time per row (µs) over all rounds; the median of the rounds' ratios."""
    target = f"{url}/v2/models/{model}/infer"
    scripts = {}
    for kind, (body, headers) in bodies(x).items():
        body_file = work / f"{model}-{kind}.body"
        body_file.write_bytes(body)
        scripts[kind] = lua(body_file, headers, work / f"{model}-{kind}.lua")
        check(url, model, kind, body, headers, len(x))
        wrk(target, scripts[kind], WARM_UP_S, parse=False)
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for _ in range(ROUNDS):
        for kind in KINDS:
            runs[kind].append(one_run(url, target, scripts[kind], server_pid))
    out: dict[str, Any] = {}
    for kind, rs in runs.items():
        mid = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
        rows = sum(r["requests"] for r in rs) * len(x)
        out[kind] = {
            "rows_per_s": mid["rps"] * len(x),
            "p50_ms": mid["p50_ms"],
            "p99_ms": mid["p99_ms"],
            "errors": sum(r["errors"] for r in rs),
            "cpu_us_per_row": sum(r["cpu_s"] for r in rs) / max(rows, 1) * 1e6,
            "infer_us_per_row": sum(r["infer_s"] for r in rs)
            / max(sum(r["infer_rows"] for r in rs), 1)
            * 1e6,
            "rounds_rows_per_s": [r["rps"] * len(x) for r in rs],
        }
        k = out[kind]
        print(
            f"{model} {kind}: {k['rows_per_s']:,.0f} rows/s, {k['cpu_us_per_row']:.2f} µs CPU/row "
            f"({k['infer_us_per_row']:.2f} inference), {k['errors']:.0f} errors; rounds: "
            + ", ".join(f"{v:,.0f}" for v in k["rounds_rows_per_s"]),
            flush=True,
        )
    out["profile"] = profile(server_pid, target, scripts["binary"], work)
    ratios = [b["rps"] / j["rps"] for j, b in zip(runs["JSON"], runs["binary"], strict=True)]
    out["ratio"] = float(np.median(ratios))
    return out


# where a sampled stack of the worker goes, by the first of these frames it holds (outermost first)
PLACES = (
    ("ONNX Runtime", "Session.run ("),
    ("drift monitor", "DriftMonitor.observe ("),
    ("adaptive batcher's thread hop", "concurrent/futures/"),
    ("v2 route: decoding, validation, answer", "infer (service/oip.py"),
)
OTHER = "HTTP, middleware, event loop"


def profile(server_pid: int, target: str, script: Path, work: Path) -> dict[str, float]:
    """py-spy over the busiest worker process while wrk sends one kind of request: each place's
    share of the samples of busy threads (py-spy leaves idle ones out)."""
    workers = psutil.Process(server_pid).children(recursive=True)
    worker = max(workers, key=lambda p: p.cpu_times().user)
    raw = work / "v2-profile.txt"
    py_spy = Path(sys.executable).parent / "py-spy"
    args = ["--pid", str(worker.pid), "--format", "raw", "--duration", str(SECONDS + 2)]
    spy = subprocess.Popen(
        [str(py_spy), "record", *args, "--rate", "250", "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    wrk(target, script, SECONDS, parse=False)
    spy.wait(60)
    counts = dict.fromkeys([*(name for name, _ in PLACES), OTHER], 0)
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            place = next((name for name, frame in PLACES if frame in stack), OTHER)
            counts[place] += int(n)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def prepare_models(home: Path, digits_stored: bool = False) -> dict[str, np.ndarray]:
    """The iris model and the serving benchmark's digits models in the store at `home` (the digits
    ones trained here unless `digits_stored`), each with ROWS rows of its data set."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.loadtests import benchmark
    from nnship.training.data import load_dataset
    from nnship.training.train import TrainConfig, train

    os.environ["BENTOML_HOME"] = str(home)
    train(TrainConfig(model="mlp", dataset="iris", epochs=5, out=str(home / "runs" / "iris")))
    export_run(
        ExportOptions(str(home / "runs" / "iris"), name="iris", variants=("fp32",), max_batch=256)
    )
    if not digits_stored:
        benchmark.prepare_models(home)
    digits = load_dataset("digits").x
    return {
        "iris": np.resize(load_dataset("iris").x, (ROWS, 4)).astype(np.float32),
        "digits-cnn": digits[:ROWS],
        "digits-heavy": digits[:ROWS],
    }


def run(home: Path, digits_stored: bool = False) -> dict[str, Any]:
    """Train and export the models into `home` (the serving benchmark's digits models already
    there when `digits_stored`), serve each and measure."""
    models = prepare_models(home, digits_stored)
    results: dict[str, Any] = {}
    cmd = [sys.executable, "-m", "bentoml", "serve", "nnship.service.service:NnshipService"]
    for model, x in models.items():
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "NNSHIP_MODEL": f"{model}:latest",
            "NNSHIP_WORKERS": "1",
            "NNSHIP_THREADS": "1",
        }
        with _server([*cmd, "--port", str(port)], env, url, "/readyz") as proc:
            results[model] = measure(url, model, proc.pid, x, home)
        results[model]["values_per_row"] = int(np.prod(x.shape[1:]))
    return results


def render(results: dict[str, Any]) -> str:
    verdicts, rows, places = [], [], []
    for model, r in results.items():
        j, b = r["JSON"], r["binary"]
        for kind in KINDS:
            k = r[kind]
            rest = k["cpu_us_per_row"] - k["infer_us_per_row"]
            rows.append(
                f"| {model} | {r['values_per_row']} | {kind} | {k['rows_per_s']:,.0f} "
                f"| {k['p50_ms']:.1f} | {k['p99_ms']:.1f} | {k['errors']:.0f} "
                f"| {k['cpu_us_per_row']:.2f} | {k['infer_us_per_row']:.2f} | {rest:.2f} "
                f"| {rest * ROWS / 1000:.2f} |"
            )
        verdicts.append(
            f"| {model} | {r['ratio']:.2f}× | {'pass' if r['ratio'] >= GOAL else 'FAIL'} "
            f"| {j['cpu_us_per_row'] / b['cpu_us_per_row']:.2f}× "
            f"| {b['infer_us_per_row'] / b['cpu_us_per_row']:.0%} "
            f"| {j['cpu_us_per_row'] / b['infer_us_per_row']:.2f}× |"
        )
        shares = r.get("profile", {})
        places.append(f"| {model} | " + " | ".join(f"{v:.0%}" for v in shares.values()) + " |")
    names = [name for name, _ in PLACES] + [OTHER]
    return "\n".join(
        [
            BEGIN,
            "## v2 inference: JSON vs binary tensor data (rows per second)",
            "",
            f"{ROWS}-row requests to `/v2/models/NAME/infer`, the same rows sent as JSON (flat "
            "data, JSON outputs) and as binary tensor data (binary outputs, tritonclient's "
            f"defaults), by wrk with {CLIENTS} keep-alive clients; {ROUNDS} rounds of a {SECONDS} s "
            "run of each kind back to back, after a warm-up; one worker, one ONNX Runtime thread. "
            "Rows/s and latency are the median round's, the ratio the median of the rounds' "
            "ratios. Worker CPU per row is its CPU time (psutil) over the rows answered in all "
            "rounds; inference per row is ONNX Runtime's time (`nnship_inference_seconds` over "
            "`nnship_batch_size` in /metrics, wall time); the rest is everything else: HTTP, "
            "middleware, decoding, validation, encoding, metrics (where inference is nearly all "
            "of it, the wall time can exceed the CPU time by the machine's scheduling, and the "
            "rest reads slightly negative). Reproduce: `python -m nnship.loadtests.benchmark "
            "--v2-encodings`.",
            "",
            f"| model | binary ÷ JSON rows/s | ≥ {GOAL:.0f}× | JSON ÷ binary worker CPU per row "
            "| inference share of binary's CPU | ceiling: JSON CPU ÷ binary inference per row |",
            "| --- | --- | --- | --- | --- | --- |",
            *verdicts,
            "",
            "| model | values a row | request and answer | rows/s | p50 ms | p99 ms | errors "
            "| worker CPU µs / row | inference µs / row | rest µs / row | rest ms / request |",
            "| --- " * 11 + "|",
            *rows,
            "",
            "Where the worker's busy time goes with binary requests (py-spy over "
            f"{SECONDS} s of the same load, each sampled stack by the first of these frames it "
            "holds):",
            "",
            "| model | " + " | ".join(names) + " |",
            "| --- " * (len(names) + 1) + "|",
            *places,
            "",
            "The binary path does no work per value or per row: the body's bytes are the array "
            "(`np.frombuffer`), the finite, shape and training-range checks are vectorised, the "
            "counters move once per request by their counts, and the answer is the output "
            "arrays' bytes. JSON pays for parsing every input value and writing every output "
            "value (plain numbers are read in one numpy call, outputs written by orjson from "
            "the arrays). The ceiling column is the ratio binary requests would reach if "
            "everything but inference cost nothing: where it is under the goal, inference "
            "alone keeps binary requests under the goal on one worker; where it is "
            "above and the ratio is not, the rest per request (the HTTP stack, middleware and "
            "the batcher's thread hop, the same for both kinds) is what JSON's per-value work "
            "is weighed against.",
            END,
        ]
    )


def upsert(report: Path, section: str) -> str:
    """The report's text with this section in place of the old one (appended when absent)."""
    text = report.read_text() if report.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + section + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def keep(report: Path, text: str) -> str:
    """`text` (a new report) followed by the old report's section, when it has one."""
    old = report.read_text() if report.exists() else ""
    if BEGIN not in old or END not in old:
        return text
    section = BEGIN + old.split(BEGIN, 1)[1].split(END, 1)[0] + END
    return text.rstrip("\n") + "\n\n" + section + "\n"
