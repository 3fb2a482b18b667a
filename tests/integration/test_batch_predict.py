"""`nnship predict` on trained packages: equal to in-process ONNX Runtime, int8 rows as served,
sequences, and a real job killed with SIGKILL half-way and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nnship.batch.job import Options, predict, staging_dir
from nnship.numeric import softmax
from nnship.onnxrt import cpu_session
from nnship.package import load_package


def _tag(iris_package) -> str:
    return f"{iris_package['model']}:{iris_package['version']}"


def _iris_rows(tag: str, n: int, seed: int = 0) -> pd.DataFrame:
    pkg = load_package(tag, variants=[])
    stats = pkg.manifest.input.stats
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(s.min, s.max, n) for s in stats], axis=1)
    df = pd.DataFrame(x, columns=pkg.manifest.input.feature_names)
    df.insert(0, "id", np.arange(n))
    return df


def _predict_parquet(tag: str, df: pd.DataFrame, tmp_path: Path, **options):
    """Write the rows as in.parquet and run the job into o.parquet; its summary."""
    df.to_parquet(tmp_path / "in.parquet", index=False)
    return predict(
        Options(
            tag,
            str(tmp_path / "in.parquet"),
            tmp_path / "o.parquet",
            variant="fp32",
            progress=False,
            **options,
        )
    )


def _fp32_reference(tag: str, df: pd.DataFrame) -> np.ndarray:
    """In-process ONNX Runtime's probabilities for the rows, fp32 on the CPU."""
    pkg = load_package(tag)
    x = df[pkg.manifest.input.feature_names].to_numpy().astype(np.float32)
    return softmax(cpu_session(pkg.variant_path("fp32"), threads=1).run(None, {"input": x})[0])


def _probabilities(table, labels) -> np.ndarray:
    return np.stack([table.column(f"p_{label}").to_numpy() for label in labels], axis=1)


@pytest.mark.parametrize("batch_size", [1, 64, 1000])
def test_store_package_output_equals_in_process_onnxruntime(iris_package, tmp_path, batch_size):
    tag = _tag(iris_package)
    df = _iris_rows(tag, 2000)
    s = _predict_parquet(
        tag, df, tmp_path, keep=["id"], batch_size=batch_size, threads=1, part_rows=700
    )
    assert (s.rows, s.predicted, s.variant) == (2000, 2000, "fp32")
    want = _fp32_reference(tag, df)
    out = pq.read_table(tmp_path / "o.parquet")
    labels = load_package(tag, variants=[]).manifest.output.labels
    np.testing.assert_allclose(_probabilities(out, labels), want, rtol=1e-5, atol=1e-6)
    assert out.column("prediction").to_pylist() == [labels[i] for i in want.argmax(axis=1)]
    assert out.column("id").to_pylist() == list(range(2000))


def test_int8_dynamic_rows_get_the_answer_they_get_alone(iris_package, tmp_path):
    tag = _tag(iris_package)
    df = _iris_rows(tag, 300, seed=1)
    df.to_csv(tmp_path / "in.csv", index=False)
    predict(
        Options(
            tag,
            str(tmp_path / "in.csv"),
            tmp_path / "o.parquet",
            batch_size=256,
            variant="int8-dynamic",
            threads=1,
            progress=False,
        )
    )
    pkg = load_package(tag)
    session = cpu_session(pkg.variant_path("int8-dynamic"), threads=1)
    x = df[pkg.manifest.input.feature_names].to_numpy().astype(np.float32)
    alone = np.concatenate(
        [softmax(session.run(None, {"input": x[i : i + 1]})[0]) for i in range(300)]
    )
    together = softmax(session.run(None, {"input": x})[0])
    out = _probabilities(pq.read_table(tmp_path / "o.parquet"), pkg.manifest.output.labels)
    np.testing.assert_allclose(out, alone, rtol=1e-6, atol=1e-7)
    assert np.abs(together - alone).max() > 1e-6  # batch-mates would have moved the answers


def _cli(*args: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nnship.cli", "predict", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize(
    "workers", [("1", "1"), ("3", "2")], ids=["one-worker", "row-groups-on-workers"]
)
def test_a_job_killed_half_way_resumes_to_the_same_bytes(iris_package, tmp_path, workers):
    tag = _tag(iris_package)
    # row groups of 20,000 rows: with workers, each is decoded whole on one of them
    _iris_rows(tag, 600_000).to_parquet(tmp_path / "in.parquet", index=False, row_group_size=20_000)
    killed, resumed_with = workers
    common = [
        "--input",
        str(tmp_path / "in.parquet"),
        "--keep",
        "id",
        "--part-rows",
        "1000",
        "--threads",
        "1",
        "--variant",
        "fp32",
    ]
    out = tmp_path / "o.parquet"
    log = staging_dir(out) / "parts.log"
    job = _cli(tag, "--output", str(out), "--workers", killed, *common)
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 30):
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    done = len(log.read_text().splitlines())
    assert not out.exists() and done < 600  # killed half-way: nothing in place yet
    resumed = _cli(tag, "--output", str(out), "--resume", "--workers", resumed_with, *common)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["resumed_parts"] >= 30 and summary["rows"] == 600_000
    assert summary["workers"] == int(resumed_with)
    ref = _cli(tag, "--output", str(tmp_path / "ref.parquet"), "--workers", "1", *common)
    assert ref.wait(timeout=300) == 0, ref.communicate()
    assert out.read_bytes() == (tmp_path / "ref.parquet").read_bytes()
    assert not staging_dir(out).exists()


def test_too_many_rejects_end_in_one_line_and_exit_2(iris_package, tmp_path):
    tag = _tag(iris_package)
    df = _iris_rows(tag, 100)
    df.iloc[::3, 2] = np.nan
    df.to_csv(tmp_path / "in.csv", index=False)
    proc = _cli(
        tag,
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "o.csv"),
        "--max-reject-fraction",
        "0.2",
        "--rejects",
        str(tmp_path / "rej.jsonl"),
    )
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(
        "nnship: error: 34 of 100 rows rejected (34.0%), more than --max-reject-fraction 0.2; e.g. "
    )
    assert last.endswith(": the value is missing (missing)")  # pandas writes NaN as an empty cell
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "rej.jsonl").exists()


@pytest.fixture(scope="module")
def lstm_package(tmp_path_factory):
    """A one-epoch LSTM on digits-seq (8 steps of 8 features), exported as fp32 only."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("lstm")
    train(TrainConfig(model="lstm", dataset="digits-seq", epochs=1, out=str(root / "run")))
    export_run(
        ExportOptions(
            str(root / "run"),
            variants=("fp32",),
            store=False,
            bench_seconds=0.02,
            max_batch=64,
            threads=1,
        )
    )
    return root / "run" / "package"


def test_sequences_from_npy_and_json_arrays_of_several_lengths(lstm_package, tmp_path):
    x = np.random.default_rng(0).uniform(0, 16, (50, 8, 8)).astype(np.float32)
    np.save(tmp_path / "seq.npy", x)
    lines = [x[i].tolist() for i in range(10)] + [x[i, :5].tolist() for i in range(10, 15)]
    lines.append(x[0, :, :3].tolist())  # 3 features per step: the wrong shape
    (tmp_path / "seq.jsonl").write_text("".join(json.dumps(v) + "\n" for v in lines))
    session = cpu_session(Path(lstm_package) / "fp32.onnx", threads=1)
    s = predict(
        Options(
            str(lstm_package),
            str(tmp_path / "seq.npy"),
            tmp_path / "a.parquet",
            batch_size=16,
            threads=1,
            progress=False,
        )
    )
    assert s.predicted == 50
    pkg = load_package(lstm_package)
    labels = pkg.manifest.output.labels
    want = softmax(session.run(None, {"input": x})[0])
    got = _probabilities(pq.read_table(tmp_path / "a.parquet"), labels)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    s = predict(
        Options(
            str(lstm_package),
            str(tmp_path / "seq.jsonl"),
            tmp_path / "b.parquet",
            threads=1,
            progress=False,
            rejects=tmp_path / "rej.jsonl",
        )
    )
    assert (s.rows, s.predicted, s.rejects) == (16, 15, 1)
    got = _probabilities(pq.read_table(tmp_path / "b.parquet"), labels)
    short = softmax(session.run(None, {"input": x[10:15, :5]})[0])
    np.testing.assert_allclose(got[:10], want[:10], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[10:], short, rtol=1e-5, atol=1e-6)
    (reject,) = [json.loads(v) for v in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert (reject["row"], reject["rule"]) == (15, "shape")


@pytest.mark.gpu
def test_on_a_gpu_the_job_runs_on_cuda_in_large_batches(iris_package, tmp_path):
    from nnship.onnxrt import nvidia_device_present

    if not nvidia_device_present():
        pytest.skip("no NVIDIA device")
    tag = _tag(iris_package)
    df = _iris_rows(tag, 20_000)
    s = _predict_parquet(tag, df, tmp_path)
    assert s.provider == "CUDAExecutionProvider" and s.batch_size == 8192
    want = _fp32_reference(tag, df)
    labels = load_package(tag, variants=[]).manifest.output.labels
    got = _probabilities(pq.read_table(tmp_path / "o.parquet"), labels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # CUDA kernels round differently
