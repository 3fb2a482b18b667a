"""Server CPU per row of a 256-row v2 inference request sent as JSON and as binary tensor data
(what tritonclient sends by default), on a small iris model served by one worker.

    python -m nnship.loadtests.benchmark --v2-encodings [--report reports/serving-benchmark.md]

Each kind is sent REQUESTS times in sequence over one keep-alive connection; the worker's CPU time
(user + system, from psutil) before and after, divided by the rows sent, is the figure. The section
it writes replaces the one between its markers in the report and leaves the rest as it is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import psutil

from nnship.loadtests.benchmark import _free_port, _server

ROWS = 256
REQUESTS = 300
WARM_UP = 30
BEGIN, END = "<!-- v2-encodings:begin -->", "<!-- v2-encodings:end -->"


def bodies(x: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The same rows as a JSON request with JSON outputs, and as a binary one with binary outputs."""
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    as_json = {"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]}
    data = x.astype("<f4").tobytes()
    binary = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(binary).encode()
    return {
        "JSON": (json.dumps(as_json).encode(), {"content-type": "application/json"}),
        "binary": (
            header + data,
            {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(header)),
            },
        ),
    }


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


def measure(url: str, model: str, server_pid: int, x: np.ndarray) -> dict[str, float]:
    """Microseconds of worker CPU per row, for each kind of request."""
    path = f"{url}/v2/models/{model}/infer"
    out = {}
    with httpx.Client(timeout=60) as client:
        for kind, (body, headers) in bodies(x).items():
            for _ in range(WARM_UP):
                client.post(path, content=body, headers=headers).raise_for_status()
            before = worker_cpu(server_pid)
            for _ in range(REQUESTS):
                client.post(path, content=body, headers=headers).raise_for_status()
            out[kind] = (worker_cpu(server_pid) - before) / (REQUESTS * len(x)) * 1e6
    return out


def render(us_per_row: dict[str, float]) -> str:
    j, b = us_per_row["JSON"], us_per_row["binary"]
    return "\n".join(
        [
            BEGIN,
            "## v2 inference: JSON vs binary tensor data (server CPU per row)",
            "",
            f"A {ROWS}-row request to `/v2/models/iris/infer`, sent {REQUESTS} times in sequence "
            "(after a warm-up) as JSON (JSON outputs) and as binary tensor data (binary outputs, "
            "tritonclient's defaults); one worker, one ONNX Runtime thread; the worker's CPU time "
            "from psutil, divided by the rows sent (`python -m nnship.loadtests.benchmark "
            "--v2-encodings`).",
            "",
            "| request and answer | worker CPU per row |",
            "| --- | --- |",
            f"| JSON | {j:.2f} µs |",
            f"| binary | {b:.2f} µs |",
            f"| JSON ÷ binary | {j / b:.2f}× |",
            "",
            f"The difference, {j - b:.2f} µs per row, is the JSON values' parsing and validation and "
            "the answer's JSON encoding; what both share (the HTTP stack, the guard, batching, "
            "inference, metrics) is a fixed cost per request that dominates for a 4-feature model, "
            "so the ratio grows with the number of values per row.",
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


def run(home: Path) -> dict[str, float]:
    """Train and export a small iris model into `home`, serve it and measure."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.training.data import load_dataset
    from nnship.training.train import TrainConfig, train

    os.environ["BENTOML_HOME"] = str(home)
    train(TrainConfig(model="mlp", dataset="iris", epochs=5, out=str(home / "runs" / "iris")))
    export_run(
        ExportOptions(str(home / "runs" / "iris"), name="iris", variants=("fp32",), max_batch=256)
    )
    x = np.resize(load_dataset("iris").x, (ROWS, 4)).astype(np.float32)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "bentoml", "serve", "nnship.service.service:NnshipService"]
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "NNSHIP_MODEL": "iris:latest",
        "NNSHIP_WORKERS": "1",
        "NNSHIP_THREADS": "1",
    }
    with _server([*cmd, "--port", str(port)], env, url, "/readyz") as proc:
        return measure(url, "iris", proc.pid, x)
