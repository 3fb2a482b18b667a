"""The rows a run keeps for export, so that it exports after its source data has moved: the test
split (or a seeded sample of at most MAX_TEST_ROWS rows) for the parity gate and the test metric,
and the first rows of the training split for int8 calibration (never test rows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from nnship.contracts import HeldOut
from nnship.errors import NnshipError
from nnship.io import atomic_write, sha256_file, verify_file

FILE = "heldout.safetensors"
MAX_TEST_ROWS = 10_000
CALIBRATION_ROWS = 512
SAMPLE_SEED = 0
TENSORS = ("test.x", "test.y", "calibration.x")


@dataclass
class HeldOutRows:
    """The stored rows: test inputs and targets, and the calibration inputs."""

    x_test: np.ndarray
    y_test: np.ndarray
    x_calibration: np.ndarray


def sample_indices(n: int, limit: int = MAX_TEST_ROWS) -> np.ndarray:
    """Indices of the test rows kept: all of them, or a seeded sample of `limit` in split order."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, limit, replace=False))


def save_heldout(
    run_dir: Path, x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> dict[str, object]:
    """Write heldout.safetensors atomically; returns its checkpoint.json record."""
    keep = sample_indices(len(x_test))
    tensors = {
        "test.x": np.ascontiguousarray(x_test[keep]),
        "test.y": np.ascontiguousarray(y_test[keep]),
        "calibration.x": np.ascontiguousarray(x_train[:CALIBRATION_ROWS]),
    }
    path = run_dir / FILE
    atomic_write(path, lambda p: save_file(tensors, str(p)))
    return {
        "file": FILE,
        "sha256": sha256_file(path),
        "test_rows": len(keep),
        "test_total": len(x_test),
        "calibration_rows": len(tensors["calibration.x"]),
    }


def load_heldout(run_dir: Path, record: HeldOut | None, meta_path: Path) -> HeldOutRows:
    """The verified rows; a run written without them is refused, with what to do about it."""
    if record is None:
        raise NnshipError(
            f"{meta_path}: heldout: missing (the run holds no test rows for the parity gate; "
            "it was written by an older nnship): retrain it to export it"
        )
    path = run_dir / record.file
    verify_file(path, record.sha256)
    try:
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise NnshipError(f"{path}: not a safetensors file ({e})") from e
    for name in TENSORS:
        if name not in tensors:
            raise NnshipError(f"{path}: tensor {name!r} missing")
    rows = HeldOutRows(tensors["test.x"], tensors["test.y"], tensors["calibration.x"])
    if len(rows.x_test) != record.test_rows or len(rows.y_test) != record.test_rows:
        raise NnshipError(
            f"{path}: holds {len(rows.x_test)} test rows, {record.test_rows} recorded"
        )
    return rows
