"""GPU checks: what only a machine with an NVIDIA GPU can show, checked and measured in one run.

    python -m nnship.loadtests.gpucheck OUT_DIR [--seconds 1] [--serve-seconds 10]

Trains a tiny digits CNN and digits-seq LSTM, exports them (fp32 and fp16), then checks that the
CUDA provider really runs (TensorRT where this build has it), that `--require-gpu` starts, fp16
against fp32 on the GPU, IO binding, a whole `nnship predict` batch job on CUDA against in-memory
ONNX Runtime, ONNX Runtime against PyTorch eager on CUDA, and the service under load with one worker
per GPU. Each check is recorded with its figures, or with why it failed or could not run, in
OUT_DIR/gpu-check.json and OUT_DIR/gpu-check.md. Without an NVIDIA GPU it writes {"gpu": false}
and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nnship.io import atomic_write

NO_GPU = "no NVIDIA GPU: nothing to check"
FAMILIES = {"cnn": "digits", "lstm": "digits-seq"}
BIG = 1024  # rows of the throughput batch
CLIENTS = (1, 64)
LOAD_PROCESSES = 4  # load generator processes without wrk
PARITY_ATOL = 1e-3  # largest |Δ probability| between the CUDA and the CPU provider, fp32
JOB_ROWS = 1_000_000  # rows of the batch job's input file
JOB_BAR = 0.85  # the batch job's rows/s against in-memory ONNX Runtime (issue: batch inference)
REQUIRED = ("torch", "onnx", "onnxruntime", "safetensors", "sklearn", "pydantic_settings")
REQUIRED += ("httpx", "bentoml", "pyarrow")  # nnship's imports the checks need


class Unavailable(Exception):
    """A check that cannot run on this machine (a missing tool, library or provider)."""


# ---- devices -------------------------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> list[str]:
    """`nvidia-smi -L` output -> one name per GPU ("GPU 0: NVIDIA H200 (UUID: ...)")."""
    return [m.strip() for m in re.findall(r"^GPU \d+: ([^(\n]+)", text, re.M)]


def visible(names: list[str], selection: str | None) -> list[str] | None:
    """The GPUs CUDA_VISIBLE_DEVICES leaves visible (None: not set, all; "": none); None when the
    selection names devices by UUID, which only CUDA itself resolves."""
    if selection is None:
        return names
    ids = [s.strip() for s in selection.split(",") if s.strip()]
    if not all(i.isdigit() for i in ids):
        return None
    return [names[int(i)] for i in ids if int(i) < len(names)]


def gpu_devices() -> list[str]:
    """The NVIDIA GPUs visible to this process: nvidia-smi's list (filtered by
    CUDA_VISIBLE_DEVICES), else PyTorch's."""
    names: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
            )
            names = parse_nvidia_smi(out.stdout)
        except (subprocess.SubprocessError, OSError):
            pass
    shown = visible(names, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if shown is not None and (names or os.environ.get("CUDA_VISIBLE_DEVICES") == ""):
        return shown
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def worker_envs(gpus: int, base: dict[str, str] | None = None) -> list[dict[str, str]]:
    """One environment per GPU: each worker sees its own device only, as device 0."""
    return [
        {**(base or {}), "CUDA_VISIBLE_DEVICES": str(i), "NNSHIP_WORKERS": "1"} for i in range(gpus)
    ]


# ---- measurements (any provider: the CPU runs them in the unit tests) ----------------------------


def provider_session(path: str | Path, provider: str) -> Any:
    """A session that asks for `provider` first, the CPU after it (get_providers() shows which ran)."""
    import onnxruntime as ort

    from nnship.onnxrt import CPU, session_options

    providers = [provider] if provider == CPU else [provider, CPU]
    return ort.InferenceSession(
        str(path), session_options(os.cpu_count() or 1), providers=providers
    )


def probabilities(logits: np.ndarray) -> np.ndarray:
    from nnship.numeric import softmax

    return softmax(logits.astype(np.float64))


def compare_providers(path: str | Path, x: np.ndarray, provider: str) -> dict[str, Any]:
    """Which provider really runs the model when `provider` is asked for, and how far its
    probabilities are from the CPU provider's on the same rows."""
    from nnship.onnxrt import CPU

    session = provider_session(path, provider)
    reference = provider_session(path, CPU).run(None, {"input": x})[0]
    out = session.run(None, {"input": x})[0]
    diff = float(np.abs(probabilities(out) - probabilities(reference)).max())
    active = session.get_providers()[0]
    return {
        "asked": provider,
        "active": active,
        "providers": session.get_providers(),
        "rows": len(x),
        "max_abs_prob_diff_vs_cpu": diff,
        "passed": active == provider and diff <= PARITY_ATOL,
    }


def variant_parity(fp32: Any, fp16: Any, x: np.ndarray, y: np.ndarray, task: str) -> dict[str, Any]:
    """fp16 against fp32 on the same sessions' provider: max |Δ probability| and each metric."""
    from nnship.training.metrics import evaluate_arrays

    a, b = fp32.run(None, {"input": x})[0], fp16.run(None, {"input": x})[0]
    key = "accuracy" if task == "classification" else "r2"
    diff = probabilities(a) - probabilities(b) if task == "classification" else a - b
    return {
        "rows": len(x),
        "max_abs_prob_diff": float(np.abs(diff).max()),
        "agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "metric": key,
        "fp32": evaluate_arrays(task, a, y)[key],
        "fp16": evaluate_arrays(task, b, y)[key],
        "providers": {"fp32": fp32.get_providers()[0], "fp16": fp16.get_providers()[0]},
    }


def plain_runner(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    """session.run: inputs and outputs as NumPy arrays, copied by ONNX Runtime on every call."""
    return lambda x: session.run(None, {"input": x})[0]


def bound_runner(session: Any, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """IO binding as the service's runtime does it: input placed on `device`, output read once."""
    import onnxruntime as ort

    def run(x: np.ndarray) -> np.ndarray:
        binding = session.io_binding()
        binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, device, 0))
        binding.bind_output("output", device, 0)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run


def rows_per_second(fn: Callable[[np.ndarray], object], big: np.ndarray, seconds: float) -> float:
    """Throughput of `fn` on `big` after one warm-up call, over at least `seconds` and 3 calls."""
    fn(big)
    rows, start = 0, time.perf_counter()
    while rows < 3 * len(big) or time.perf_counter() - start < seconds:
        fn(big)
        rows += len(big)
    return rows / (time.perf_counter() - start)


def resize(x: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))


def batch_job_figures(package: Path, x: np.ndarray, rows: int, work: Path) -> dict[str, Any]:
    """`nnship predict` (fp32, all cores, its default batch size and workers) over `rows` rows
    written as an NPY file, against the job's own runtime on the same rows preloaded in memory at
    the job's batch size; the job's provider and batch size, rows/s both ways and their ratio, and
    the largest |Δ probability| between its output and the CPU provider's answer on the same rows."""
    import pyarrow.parquet as pq

    from nnship.batch.engine import open_runtime
    from nnship.batch.job import Options, predict
    from nnship.onnxrt import CPU

    big = resize(x, rows)
    np.save(work / "job-rows.npy", big)
    out = work / "job-output.parquet"
    summary = predict(
        Options(
            package=str(package),
            input=str(work / "job-rows.npy"),
            output=out,
            variant="fp32",
            overwrite=True,
            progress=False,
        )
    )
    table = pq.read_table(out)
    columns = [c for c in table.column_names if c.startswith("p_")] or ["prediction"]
    got = np.column_stack([table.column(c).to_numpy() for c in columns])
    reference = provider_session(package / "fp32.onnx", CPU).run(None, {"input": x})[0]
    want = probabilities(reference) if columns[0].startswith("p_") else reference[:, :1]
    diff = float(np.abs(got - np.resize(want, got.shape)).max())
    runtime = open_runtime(str(package), "fp32", 0)
    step = summary.batch_size

    def in_memory(rows_: np.ndarray) -> None:
        for i in range(0, len(rows_), step):
            runtime.run(rows_[i : i + step])

    in_memory(big[:step])  # warm-up
    start = time.perf_counter()
    in_memory(big)
    baseline = rows / (time.perf_counter() - start)
    return {
        "rows": summary.rows,
        "predicted": summary.predicted,
        "provider": summary.provider,
        "in_memory_provider": runtime.provider,
        "batch_size": summary.batch_size,
        "workers": summary.workers,
        "job_rows_per_s": summary.rows_per_s,
        "in_memory_rows_per_s": baseline,
        "ratio": summary.rows_per_s / baseline,
        "bar": JOB_BAR,
        "max_abs_prob_diff_vs_cpu": diff,
    }


# ---- the load generator (wrk when installed, else asyncio + httpx) -------------------------------


def wrk_load(url: str, script: Path, clients: int, seconds: int) -> dict[str, float]:
    from nnship.loadtests.wrk import run_wrk  # with the serving path's other imports

    return {
        **run_wrk(url, script, clients, seconds, timeout=seconds + 30),
        "tool": "wrk",
        "clients": clients,
    }


def latency_summary(latencies_s: list[float], errors: int, seconds: float) -> dict[str, Any]:
    """p50/p99 in ms and answered requests per second from per-request latencies."""
    ms = np.asarray(latencies_s) * 1e3
    return {
        "rps": len(latencies_s) / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "errors": errors,
    }


async def _http_clients(
    url: str, bodies: list[str], clients: int, seconds: float, transport: Any
) -> tuple[list[float], int, float]:
    """`clients` concurrent request loops: (latencies of the answered requests, errors, elapsed)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(
        base_url=url, transport=transport, limits=limits, timeout=30
    ) as client:
        deadline = time.perf_counter() + seconds

        async def one(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post(
                        "/predict", content=bodies[i % len(bodies)], headers=headers
                    )
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1
                i += clients

        start = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(clients)))
        return latencies, errors, time.perf_counter() - start


def _http_process(
    url: str, bodies: list[str], clients: int, seconds: float
) -> tuple[list[float], int, float]:
    return asyncio.run(_http_clients(url, bodies, clients, seconds, None))


def http_load(
    url: str,
    bodies: list[str],
    clients: int,
    seconds: float,
    transport: Any = None,
    processes: int = 1,
) -> dict[str, Any]:
    """`clients` concurrent loops POSTing /predict bodies for `seconds`, spread over up to
    `processes` processes (one Python event loop tops out well below a fast server): p50/p99,
    requests/s."""
    from concurrent.futures import ProcessPoolExecutor

    procs = max(1, min(processes, clients))
    if procs == 1 or transport is not None:
        parts = [asyncio.run(_http_clients(url, bodies, clients, seconds, transport))]
    else:
        shares = [clients // procs + (k < clients % procs) for k in range(procs)]
        with ProcessPoolExecutor(procs) as pool:
            runs = [pool.submit(_http_process, url, bodies, n, seconds) for n in shares]
            parts = [r.result(timeout=seconds + 60) for r in runs]
    latencies = [t for p in parts for t in p[0]]
    r = latency_summary(latencies, sum(p[1] for p in parts), max(p[2] for p in parts))
    return {**r, "tool": "httpx", "clients": clients, "processes": procs}


# ---- the run: models, checks, report -------------------------------------------------------------


@dataclass
class Model:
    """A trained and exported model: its run and package folders and its held-out rows."""

    family: str
    dataset: str
    run: Path
    package: Path
    x: np.ndarray
    y: np.ndarray
    task: str


@dataclass
class Context:
    devices: list[str]
    work: Path
    seconds: float
    serve_seconds: int
    models: dict[str, Model] = field(default_factory=dict)
    models_error: str | None = None
    provider: str = "CUDAExecutionProvider"  # what ONNX Runtime is asked to run on
    torch_device: str = "cuda"  # where PyTorch eager runs


def build_models(ctx: Context, epochs: int = 3) -> dict[str, Any]:
    """Train the tiny CNN and LSTM with nnship's training API and export fp32 and fp16, into a
    model store of their own when BentoML is there to serve them."""
    from nnship.export.package import ExportOptions, export_run, load_run
    from nnship.training.train import TrainConfig, train

    store = importlib.util.find_spec("bentoml") is not None
    if store:
        os.environ["BENTOML_HOME"] = str(ctx.work / "bentoml")
    figures: dict[str, Any] = {}
    for family, dataset in FAMILIES.items():
        run = ctx.work / f"{dataset}-{family}"
        t = time.perf_counter()
        train(TrainConfig(model=family, dataset=dataset, epochs=epochs, out=str(run)))
        manifest = export_run(
            ExportOptions(
                str(run), name=f"{dataset}-{family}", variants=("fp32", "fp16"), store=store
            )
        )
        stored = load_run(run)
        ctx.models[family] = Model(
            family,
            dataset,
            run,
            run / "package",
            stored.rows.x_test,
            stored.rows.y_test,
            stored.meta.output.task,
        )
        figures[family] = {
            "dataset": dataset,
            "epochs": epochs,
            "fp32_test_metric": manifest.variants["fp32"].test_metric,
            "shipped": manifest.shipped,
            "seconds": time.perf_counter() - t,
        }
    return figures


def _models(ctx: Context) -> dict[str, Model]:
    if not ctx.models:
        raise Unavailable(f"no models: {ctx.models_error or 'not built'}")
    return ctx.models


def fp16_path(model: Model) -> Path:
    """The package's fp16 file, or one built from its fp32 file when export left fp16 unshipped."""
    path = model.package / "fp16.onnx"
    if path.exists():
        return path
    from nnship.export.variants import build_fp16

    built = model.run / "fp16-unshipped.onnx"
    build_fp16(model.package / "fp32.onnx", built)
    return built


def check_cuda(ctx: Context) -> dict[str, Any]:
    """CUDA runs the fp32 model (listed first, no CPU fallback) with the CPU provider's answers."""
    out = {
        f: compare_providers(m.package / "fp32.onnx", m.x, ctx.provider)
        for f, m in _models(ctx).items()
    }
    if not all(r["passed"] for r in out.values()):
        raise AssertionError(f"CUDA did not run the model or disagrees with the CPU: {out}")
    return out


def check_tensorrt(ctx: Context) -> dict[str, Any]:
    """TensorRT, where this onnxruntime build offers it."""
    import onnxruntime as ort

    from nnship.onnxrt import TENSORRT

    if TENSORRT not in ort.get_available_providers():
        raise Unavailable("this onnxruntime build has no TensorrtExecutionProvider")
    out = {
        f: compare_providers(m.package / "fp32.onnx", m.x[:256], TENSORRT)
        for f, m in _models(ctx).items()
    }
    if not all(r["passed"] for r in out.values()):
        raise AssertionError(f"TensorRT did not run the model or disagrees with the CPU: {out}")
    return out


def check_require_gpu(ctx: Context) -> dict[str, Any]:
    """The service's runtime with require_gpu=True starts, on CUDA, for each package."""
    from nnship.service.runtime import load_runtime
    from nnship.service.settings import Settings

    out = {}
    for family, m in _models(ctx).items():
        rt = load_runtime(Settings(model=str(m.package), require_gpu=True))
        out[family] = {"provider": rt.provider, "variant": rt.variant, "on_gpu": rt.on_gpu}
        if rt.provider != ctx.provider:
            raise AssertionError(f"{family}: require_gpu runtime is on {rt.provider}")
    return out


def check_fp16(ctx: Context) -> dict[str, Any]:
    """fp16 against fp32, both on CUDA, on the held-out rows."""
    out = {}
    for family, m in _models(ctx).items():
        fp32 = provider_session(m.package / "fp32.onnx", ctx.provider)
        fp16 = provider_session(fp16_path(m), ctx.provider)
        out[family] = variant_parity(fp32, fp16, m.x, m.y, m.task)
    return out


def check_io_binding(ctx: Context) -> dict[str, Any]:
    """The runtime the service and batch jobs share binds IO on CUDA; rows/s at batch 1024 with
    and without binding."""
    from nnship.batch.engine import open_runtime

    out = {}
    for family, m in _models(ctx).items():
        rt = open_runtime(str(m.package), "fp32", os.cpu_count() or 1)
        if not rt.on_gpu:
            raise AssertionError(f"{family}: the runtime is on {rt.provider}, so it binds no IO")
        big = resize(m.x, BIG)
        np.testing.assert_allclose(rt.run(big), plain_runner(rt.session)(big), atol=1e-4)
        plain = rows_per_second(plain_runner(rt.session), big, ctx.seconds)
        bound = rows_per_second(rt.run, big, ctx.seconds)
        out[family] = {
            "provider": rt.provider,
            "batch": BIG,
            "rows_per_s_plain": plain,
            "rows_per_s_io_binding": bound,
            "speedup": bound / plain,
        }
    return out


def check_batch_job(ctx: Context) -> dict[str, Any]:
    """A whole `nnship predict` job runs on CUDA in large batches, answers as the CPU provider does,
    and keeps up with in-memory ONNX Runtime on the GPU (rows/s ratio against the 0.85 bar)."""
    from nnship.batch.engine import GPU_BATCH

    out = {}
    for family, m in _models(ctx).items():
        folder = ctx.work / f"batch-{family}"
        folder.mkdir(exist_ok=True)
        out[family] = batch_job_figures(m.package, m.x, JOB_ROWS, folder)
        shutil.rmtree(folder)
    for family, f in out.items():
        if f["provider"] != ctx.provider or f["batch_size"] != GPU_BATCH:
            raise AssertionError(
                f"{family}: the job ran on {f['provider']}, batch {f['batch_size']}"
            )
        if f["max_abs_prob_diff_vs_cpu"] > PARITY_ATOL or f["predicted"] != JOB_ROWS:
            raise AssertionError(f"{family}: the job's answers differ from the CPU's: {f}")
    return out


def check_ort_vs_torch(ctx: Context) -> dict[str, Any]:
    """ORT CUDA fp32/fp16 against PyTorch eager on CUDA: batch-1 p50, batch-1024 rows/s."""
    import torch

    from nnship.export.bench import measure
    from nnship.training.checkpoint import load_checkpoint

    out = {}
    for family, m in _models(ctx).items():
        net, _ = load_checkpoint(m.run)  # safetensors weights, verified by sha256
        net = net.to(ctx.torch_device).eval()

        def eager(x: np.ndarray, net: Any = net) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(x).to(ctx.torch_device)).cpu().numpy()

        runners = {
            "pytorch-eager": eager,
            "ort-fp32": plain_runner(provider_session(m.package / "fp32.onnx", ctx.provider)),
            "ort-fp16": plain_runner(provider_session(fp16_path(m), ctx.provider)),
        }
        row, big = m.x[:1], resize(m.x, BIG)
        out[family] = {n: measure(fn, row, big, ctx.seconds).as_dict() for n, fn in runners.items()}
    return out


def _serve_one(tag: str, env: dict[str, str], require_gpu: bool) -> tuple[int, Any]:
    """A free port and `nnship serve TAG --require-gpu` on it, as a context manager."""
    from nnship.loadtests.benchmark import _free_port, _server

    port = _free_port()
    cmd = [sys.executable, "-m", "nnship.cli", "serve", tag, "--port", str(port)]
    cmd += ["--require-gpu"] if require_gpu else []
    return port, _server(cmd, env, f"http://127.0.0.1:{port}", "/readyz")


def load(url: str, bodies: list[str], clients: int, ctx: Context) -> dict[str, float]:
    """wrk when installed, else the asyncio load generator."""
    if shutil.which("wrk"):
        from nnship.loadtests.wrk import lua_script

        script = lua_script(bodies, ctx.work / "predict.lua")
        return wrk_load(url, script, clients, ctx.serve_seconds)
    return http_load(url, bodies, clients, ctx.serve_seconds, processes=LOAD_PROCESSES)


def check_serve(ctx: Context) -> dict[str, Any]:
    """`nnship serve MODEL --require-gpu`, one server per GPU, under 1 and 64 clients each;
    with several GPUs also all of them at once."""
    import contextlib

    if importlib.util.find_spec("bentoml") is None:
        raise Unavailable("bentoml is not installed: the service cannot start")
    import httpx

    from nnship.loadtests.rows import predict_bodies
    from nnship.onnxrt import CPU

    m = _models(ctx)["cnn"]
    bodies = predict_bodies(m.dataset, 64)
    envs = worker_envs(len(ctx.devices), {"BENTOML_HOME": os.environ["BENTOML_HOME"]})
    out: dict[str, Any] = {"model": f"{m.dataset}-{m.family}", "gpus": len(envs), "per_gpu": {}}
    with contextlib.ExitStack() as stack:
        urls = []
        for env in envs:
            port, server = _serve_one(f"{out['model']}:latest", env, ctx.provider != CPU)
            stack.enter_context(server)
            urls.append(f"http://127.0.0.1:{port}")
        for i, url in enumerate(urls):
            meta = httpx.get(f"{url}/v2/models/{out['model']}", timeout=10).json()["parameters"]
            out["per_gpu"][str(i)] = {
                "provider": meta["provider"],
                "variant": meta["variant"],
                **{f"clients-{c}": load(url, bodies, c, ctx) for c in CLIENTS},
            }
        if len(urls) > 1:
            results: dict[str, Any] = {}
            threads = [
                threading.Thread(
                    target=lambda i=i, u=u: results.__setitem__(str(i), load(u, bodies, 64, ctx))
                )
                for i, u in enumerate(urls)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(ctx.serve_seconds + 60)
            out["all_at_once_64_each"] = results
            out["all_at_once_rps"] = sum(r["rps"] for r in results.values())
    return out


CHECKS: list[tuple[str, Callable[[Context], dict[str, Any]], float]] = [
    ("cuda-provider", check_cuda, 60),
    ("tensorrt", check_tensorrt, 120),
    ("require-gpu", check_require_gpu, 60),
    ("fp16-parity", check_fp16, 60),
    ("io-binding", check_io_binding, 60),
    ("batch-job", check_batch_job, 150),
    ("ort-vs-torch", check_ort_vs_torch, 120),
    ("serve", check_serve, 240),
]


def run_check(fn: Callable[[], dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Run one check in a thread with a deadline: ok with figures, unavailable, failed or timeout."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result.update(status="ok", figures=fn())
        except Unavailable as e:
            result.update(status="unavailable", reason=str(e))
        except ImportError as e:
            result.update(status="unavailable", reason=f"not installed: {e.name or e}")
        except Exception as e:
            result.update(status="failed", reason=f"{type(e).__name__}: {e}"[:2000])

    start = time.perf_counter()
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        result = {"status": "timeout", "reason": f"no answer within {timeout:.0f} s"}
    return {**result, "seconds": round(time.perf_counter() - start, 2)}


def environment() -> dict[str, Any]:
    """Versions, providers, the load generator, and which of nnship's dependencies are missing."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    try:
        import onnxruntime as ort

        versions.update(onnxruntime=ort.__version__, providers=ort.get_available_providers())
    except ImportError:
        versions["onnxruntime"] = None
    try:
        import torch

        versions.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    except ImportError:
        versions["torch"] = None
    versions["wrk"] = shutil.which("wrk") is not None
    versions["missing"] = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    return versions


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _flatten(figures: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(figures, dict):
        return [(prefix, figures)]
    rows: list[tuple[str, Any]] = []
    for k, v in figures.items():
        rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the machine, a status table of the checks, then every figure."""
    lines = ["# GPU check", ""]
    if not report["gpu"]:
        return "\n".join([*lines, f"{NO_GPU} (run at {report['started']}).", ""])
    env = report["environment"]
    lines += [
        f"Run at {report['started']} in {report['seconds']:.0f} s on "
        f"{len(report['devices'])} GPU(s): {', '.join(report['devices'])}. "
        f"onnxruntime {env.get('onnxruntime')}, torch {env.get('torch')} (CUDA "
        f"{env.get('torch_cuda')}), load generator: {'wrk' if env.get('wrk') else 'httpx'}. "
        f"Missing modules: {', '.join(env.get('missing') or []) or 'none'}. "
        "Reproduce: `make gpu-check OUT=reports/gpu`.",
        "",
        "| check | status | seconds | reason |",
        "| --- | --- | --- | --- |",
    ]
    for name, c in report["checks"].items():
        reason = (c.get("reason") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {c['status']} | {c['seconds']:.1f} | {reason[:300]} |")
    for name, c in report["checks"].items():
        if c.get("figures"):
            lines += ["", f"## {name}", "", "| figure | value |", "| --- | --- |"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(c["figures"])]
    return "\n".join([*lines, ""])


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str)
    atomic_write(out / "gpu-check.json", lambda p: p.write_text(text + "\n"))
    atomic_write(out / "gpu-check.md", lambda p: p.write_text(render_markdown(report)))


def run_all(out: Path, seconds: float, serve_seconds: int) -> dict[str, Any]:
    """Every check on this machine's GPUs; the report as written."""
    start = time.perf_counter()
    report: dict[str, Any] = {
        "gpu": False,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "devices": gpu_devices(),
        "environment": environment(),
        "checks": {},
    }
    if not report["devices"]:
        report.update(reason=NO_GPU, seconds=time.perf_counter() - start)
        write_report(out, report)
        print(NO_GPU)
        return report
    report["gpu"] = True
    with tempfile.TemporaryDirectory(prefix="nnship-gpucheck-") as work:
        ctx = Context(report["devices"], Path(work), seconds, serve_seconds)
        models = run_check(lambda: build_models(ctx), 240)
        if models["status"] != "ok":
            ctx.models_error = models.get("reason")
        report["checks"]["models"] = models
        for name, fn, timeout in CHECKS:
            report["checks"][name] = run_check(lambda fn=fn: fn(ctx), timeout)
            print(f"{name}: {report['checks'][name]['status']}", flush=True)
            report["seconds"] = time.perf_counter() - start
            write_report(out, report)  # a partial report survives a killed run
    report["seconds"] = time.perf_counter() - start
    write_report(out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder for gpu-check.json and gpu-check.md")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum seconds per measurement")
    p.add_argument("--serve-seconds", type=int, default=10, help="seconds of load per level")
    args = p.parse_args(argv)
    report = run_all(Path(args.out), args.seconds, args.serve_seconds)
    if report["gpu"]:
        print((Path(args.out) / "gpu-check.md").read_text())
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # a check stuck in a driver call must not keep the process alive
