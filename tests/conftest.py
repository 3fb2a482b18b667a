"""Shared fixtures: small data files and tiny trained runs."""

from __future__ import annotations

import os
import shutil
import tempfile

# every test process gets its own BentoML home (model store), set before bentoml is imported
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="nnship-bentoml-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# prometheus_client picks its multiprocess mode at import: the in-process service tests need it
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="nnship-prom-")

import numpy as np
import pytest
import torch

# both are removed when the session ends (remove_session_folders)
SESSION_FOLDERS = (os.environ["BENTOML_HOME"], os.environ["PROMETHEUS_MULTIPROC_DIR"])
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def remove_session_folders():
    """The session's model store and metrics folder go when the last test is done."""
    yield
    for folder in SESSION_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def make_npz(path, n: int = 200, features: int = 6, classes: int = 3, seed: int = 0):
    """A separable-ish classification set saved as NPZ (X, y)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.normal(0, 3, (classes, features))
    x = centers[y] + rng.normal(0, 1, (n, features))
    np.savez(path, X=x.astype(np.float32), y=y)
    return path


@pytest.fixture
def npz_file(tmp_path):
    return make_npz(tmp_path / "blobs.npz")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 3-epoch mlp run on iris, shared by read-only tests."""
    from nnship.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "iris"
    train(TrainConfig(model="mlp", dataset="iris", epochs=3, out=str(out)))
    return out


@pytest.fixture(scope="session")
def iris_package(tiny_run):
    """The tiny iris run exported into the test model store as iris-served (fp32 and int8-dynamic)."""
    from nnship.contracts import as_json
    from nnship.export.package import ExportOptions, export_run

    return as_json(
        export_run(
            ExportOptions(
                str(tiny_run),
                name="iris-served",
                variants=("fp32", "int8-dynamic"),
                bench_seconds=0.02,
                max_batch=64,
                threads=1,
            )
        )
    )
