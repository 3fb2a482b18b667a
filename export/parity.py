"""Parity of an ONNX model against PyTorch: names, then shapes, then values within a tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from nnship.errors import NnshipError


class ParityError(NnshipError):
    """An exported model disagrees with PyTorch beyond the tolerance."""


@dataclass
class BatchParity:
    name: str
    rows: int
    max_abs: float
    max_rel: float
    labels_equal: bool | None  # None for regression


@dataclass
class ParityReport:
    atol: float
    rtol: float
    batches: list[BatchParity] = field(default_factory=list)
    passed: bool = True
    problem: str = ""

    @property
    def max_abs(self) -> float:
        return max((b.max_abs for b in self.batches), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((b.max_rel for b in self.batches), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_abs": self.max_abs, "max_rel": self.max_rel}


def edge_batches(x_test: np.ndarray, sequence: bool, max_batch: int) -> dict[str, np.ndarray]:
    """The whole test split, batch 1, an odd batch, the largest batch; several lengths for sequences."""
    batches = {
        "test": x_test,
        "batch-1": x_test[:1],
        "batch-7": x_test[:7],
        f"batch-{max_batch}": np.resize(x_test, (max_batch, *x_test.shape[1:])),
    }
    if sequence:
        t = x_test.shape[1]
        for length in sorted({1, max(1, t // 2), 2 * t}):
            seq = (
                np.concatenate([x_test, x_test], axis=1)[:, :length]
                if length > t
                else x_test[:, :length]
            )
            batches[f"length-{length}"] = np.ascontiguousarray(seq[:64])
    return batches


def run_session(session: ort.InferenceSession, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[i : i + chunk]})[0] for i in range(0, len(x), chunk)]
    )


@torch.no_grad()
def run_torch(model: torch.nn.Module, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    model.eval()
    return np.concatenate(
        [model(torch.from_numpy(x[i : i + chunk])).numpy() for i in range(0, len(x), chunk)]
    )


def check_parity(
    session: ort.InferenceSession,
    model: torch.nn.Module,
    batches: dict[str, np.ndarray],
    classification: bool,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ParityReport:
    """Compare output names, then shapes, then values (and argmax labels) on every batch."""
    report = ParityReport(atol, rtol)
    outputs = [o.name for o in session.get_outputs()]
    if outputs != ["output"]:
        report.passed, report.problem = False, f"output names {outputs} != ['output']"
        return report
    for name, x in batches.items():
        ours, ref = (
            run_session(session, x).astype(np.float64),
            run_torch(model, x).astype(np.float64),
        )
        if ours.shape != ref.shape:
            report.passed = False
            report.problem = f"{name}: shape {ours.shape} != PyTorch {ref.shape}"
            return report
        diff = np.abs(ours - ref)
        rel = diff / np.maximum(np.abs(ref), 1e-6)
        labels = bool((ours.argmax(1) == ref.argmax(1)).all()) if classification else None
        report.batches.append(
            BatchParity(name, len(x), float(diff.max()), float(rel.max()), labels)
        )
        close = bool(np.all(diff <= atol + rtol * np.abs(ref)))
        if report.passed and not close:
            report.passed = False
            report.problem = (
                f"{name}: max abs diff {diff.max():.3g} exceeds atol {atol} + rtol {rtol}"
            )
        elif report.passed and labels is False:
            report.passed = False
            report.problem = f"{name}: predicted labels differ from PyTorch"
    return report
