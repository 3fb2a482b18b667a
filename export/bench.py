"""Latency and throughput of ONNX Runtime sessions and PyTorch eager, measured the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class Speed:
    p50_ms: float  # batch-1 latency
    p99_ms: float
    throughput_rps: float  # rows per second at the throughput batch size
    batch: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def measure(
    fn: Callable[[np.ndarray], object],
    row: np.ndarray,
    big: np.ndarray,
    min_seconds: float = 0.5,
    min_iters: int = 50,
) -> Speed:
    """Batch-1 latency percentiles, then throughput on `big`, each after a warm-up."""
    for _ in range(10):
        fn(row)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn(row)
        times.append(time.perf_counter() - t)
        if len(times) >= 20000:
            break
    fn(big)
    rows, start = 0, time.perf_counter()
    while rows < 5 * len(big) or time.perf_counter() - start < min_seconds:
        fn(big)
        rows += len(big)
    seconds = time.perf_counter() - start
    ms = np.asarray(times) * 1e3
    return Speed(
        float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), rows / seconds, len(big)
    )


def ort_runner(session) -> Callable[[np.ndarray], object]:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def torch_runner(model: torch.nn.Module, threads: int) -> Callable[[np.ndarray], object]:
    torch.set_num_threads(threads)
    model.eval()

    def run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def measure_rounds(
    runners: dict[str, Callable[[np.ndarray], object]],
    row: np.ndarray,
    big: np.ndarray,
    min_seconds: float = 0.5,
    rounds: int = 3,
) -> dict[str, dict[str, float]]:
    """Measure every runner in interleaved rounds and keep each one's best round (lowest p50, highest
    throughput), so that a passing disturbance on the machine does not decide a comparison."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name, fn in runners.items():
            s = measure(fn, row, big, min_seconds / rounds).as_dict()
            if name not in best:
                best[name] = s
            else:
                b = best[name]
                b["p50_ms"] = min(b["p50_ms"], s["p50_ms"])
                b["p99_ms"] = min(b["p99_ms"], s["p99_ms"])
                b["throughput_rps"] = max(b["throughput_rps"], s["throughput_rps"])
    return best
