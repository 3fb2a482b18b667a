"""`nnship loadtest --host URL` against real services of several families: it learns the model and
its rows from the server alone, takes real rows from a file, and explains a failing run."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nnship.loadtests.slo import LOCUSTFILE
from tests.server import iris_env, running_server

RUN = ("--duration", "3s", "--users", "2", "--slo-p99-ms", "5000")


def _stored(tmp_path_factory, model: str, dataset: str, name: str, epochs: int) -> str:
    """A tiny run of `model` on `dataset`, exported (fp32) into the test store as `name`."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp(name) / "run"
    train(TrainConfig(model=model, dataset=dataset, epochs=epochs, out=str(out)))
    manifest = export_run(
        ExportOptions(
            str(out), name=name, variants=("fp32",), bench_seconds=0.02, max_batch=64, threads=1
        )
    )
    return f"{name}:{manifest.version}"


@pytest.fixture(scope="module")
def lstm_server(tmp_path_factory):
    tag = _stored(tmp_path_factory, "lstm", "digits-seq", "seq-lstm", 1)
    with running_server({"NNSHIP_MODEL": tag, "NNSHIP_THREADS": "1"}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def regression_server(tmp_path_factory):
    tag = _stored(tmp_path_factory, "mlp", "diabetes", "diabetes-reg", 2)
    with running_server({"NNSHIP_MODEL": tag, "NNSHIP_THREADS": "1"}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def cnn_server(tmp_path_factory):
    tag = _stored(tmp_path_factory, "cnn", "digits", "digits-small", 1)
    with running_server({"NNSHIP_MODEL": tag, "NNSHIP_THREADS": "1"}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def keyed_server(iris_package):
    env = iris_env(iris_package, api_key="load-key")
    with running_server(env) as (url, _):
        yield url


def _loadtest(*argv: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "NNSHIP_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "nnship.cli", "loadtest", *argv, *RUN],
        capture_output=True,
        text=True,
        timeout=180,
        env={**clean, **env},
    )


def _passed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.splitlines()[-1]
    assert summary.endswith("PASS (SLO p99 <= 5000.0 ms, zero failures)"), proc.stdout
    assert " 0 failures " in summary and " 0 requests" not in summary


def test_an_lstm_service_needs_nothing_but_its_url(lstm_server):
    proc = _loadtest("--host", lstm_server)
    _passed(proc)
    assert "model seq-lstm, 1024 rows of shape [8, 8] drawn from the training statistics" in (
        proc.stdout
    )


def test_a_regression_service_needs_nothing_but_its_url(regression_server):
    proc = _loadtest("--host", regression_server + "/")
    _passed(proc)
    assert "model diabetes-reg, 1024 rows of shape [10] drawn" in proc.stdout


def test_an_image_service_under_nnship_loadtest_and_under_locust_itself(cnn_server):
    proc = _loadtest("--host", cnn_server)
    _passed(proc)
    assert "model digits-small, 1024 rows of shape [1, 8, 8] drawn" in proc.stdout
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        cnn_server,
    ]
    locust = subprocess.run(  # the scenario alone draws its rows from the server's metadata too
        [*cmd, "-u", "2", "-r", "2", "-t", "3s", "--only-summary"],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("NNSHIP_")},
    )
    assert locust.returncode == 0, locust.stderr[-3000:]  # Locust exits 1 on any failed request
    assert "/predict" in locust.stderr and "/v2/infer" in locust.stderr


def test_real_rows_from_a_csv_with_its_label_column(regression_server, tmp_path):
    from nnship.training.data import load_dataset

    ds = load_dataset("diabetes")
    df = pd.DataFrame(ds.x[:40], columns=ds.feature_names)
    df.insert(3, "progression", ds.y[:40])  # the label column among the features
    df = df[list(reversed(df.columns))]  # features by name, not by position
    df.to_csv(tmp_path / "patients.csv", index=False)
    proc = _loadtest(
        "--host",
        regression_server,
        "--rows",
        str(tmp_path / "patients.csv"),
        "--target",
        "progression",
    )
    _passed(proc)
    assert f"40 rows of shape [10] {tmp_path / 'patients.csv'}" in proc.stdout
    df.columns = [f"c{i}" for i in range(11)]  # unnamed columns are taken in file order
    df.to_csv(tmp_path / "unnamed.csv", index=False)
    unlabelled = _loadtest("--host", regression_server, "--rows", str(tmp_path / "unnamed.csv"))
    assert unlabelled.returncode == 2
    assert unlabelled.stderr.strip() == (
        f"nnship: error: --rows {tmp_path / 'unnamed.csv'}: rows of shape [11] do not fit "
        "diabetes-reg, which takes rows of 10 values (shape [10])"
    )


def test_a_failing_run_prints_the_first_failure_and_exits_non_zero(keyed_server):
    refused = _loadtest("--host", keyed_server)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = refused.stdout.splitlines()
    assert "-> FAIL" in lines[-2] and " 0 failures" not in lines[-2]
    assert lines[-1].startswith("first failure: POST /")
    assert "-> status 401: " in lines[-1] and '"type":"unauthorized"' in lines[-1].replace(" ", "")
    _passed(_loadtest("--host", keyed_server, NNSHIP_API_KEY="load-key"))


def test_an_unreachable_host_is_one_line():
    proc = _loadtest("--host", "http://127.0.0.1:9")
    assert proc.returncode == 2
    assert proc.stderr.startswith("nnship: error: cannot reach http://127.0.0.1:9/")
    assert len(proc.stderr.strip().splitlines()) == 1


# --- sweeps (wrk) ---------------------------------------------------------------------------------

SWEEP = ("--sweep", "--concurrency", "1,4", "--step-duration", "1")


@pytest.fixture(scope="module")
def gru_server(tmp_path_factory):
    tag = _stored(tmp_path_factory, "gru", "digits-seq", "seq-gru", 1)
    with running_server({"NNSHIP_MODEL": tag, "NNSHIP_THREADS": "1"}) as (url, _):
        yield url


def _sweep(out, *argv: str, **env: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`nnship loadtest ARGV --out OUT` and its JSON report (None when it wrote none)."""
    clean = {k: v for k, v in os.environ.items() if k != "NNSHIP_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "nnship.cli", "loadtest", *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, **env},
    )
    reports = list(out.glob("*.json")) if out.exists() else []
    return proc, json.loads(reports[0].read_text()) if reports else None


@pytest.mark.parametrize(
    "server, model, per_request",
    [
        ("keyed_server", "iris-served", 1),  # an MLP classifier behind an API key
        ("cnn_server", "digits-small", 3),
        ("lstm_server", "seq-lstm", 1),
        ("gru_server", "seq-gru", 2),
        ("regression_server", "diabetes-reg", 1),
    ],
)
def test_a_sweep_of_every_family_finds_its_knee(request, tmp_path, server, model, per_request):
    url = request.getfixturevalue(server)
    proc, report = _sweep(
        tmp_path,
        "--host",
        url,
        *SWEEP,
        "--rows-per-request",
        str(per_request),
        "--slo-p99-ms",
        "5000",
        NNSHIP_API_KEY="load-key",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = report["steps"]
    assert report["model"] == model and report["server"] == url
    assert [s["concurrency"] for s in steps] == [1, 4]
    assert all(s["errors"] == 0 and s["requests"] > 0 and s["meets_slo"] for s in steps)
    assert all(s["rows_per_s"] == pytest.approx(s["rps"] * per_request) for s in steps)
    assert all(s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] for s in steps)
    knee = max(steps, key=lambda s: s["rps"])
    assert report["knee"] == {k: v for k, v in knee.items() if k != "meets_slo"}
    last = proc.stdout.splitlines()[-1]
    clients = f"{knee['concurrency']} client{'' if knee['concurrency'] == 1 else 's'}"
    assert last.startswith(f"knee: {clients}, {knee['rps']:,.0f} req/s")  # 1 when 4 are slower
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json", "sweep.md", "sweep.png"]


def test_a_sweep_with_real_rows_and_one_within_no_slo(regression_server, tmp_path):
    from nnship.training.data import load_dataset

    np.save(tmp_path / "rows.npy", load_dataset("diabetes").x[:50].astype(np.float32))
    proc, report = _sweep(
        tmp_path / "out",
        "--host",
        regression_server,
        *SWEEP,
        "--rows",
        str(tmp_path / "rows.npy"),
        "--slo-p99-ms",
        "0.001",
        "--server-label",
        "regression on one worker",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert report["server"] == "regression on one worker"
    assert f"50 rows of shape [10] {tmp_path / 'rows.npy'}" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith(
        "FAIL: no step meets the SLO p99 <= 0.001 ms with zero errors (lowest p99 "
    )
    assert report["knee"] is None and report["passed"] is False
    assert [s["errors"] for s in report["steps"]] == [0, 0]


def test_a_sweep_without_the_api_key_fails_on_its_errors(keyed_server, tmp_path):
    proc, report = _sweep(tmp_path, "--host", keyed_server, *SWEEP, "--slo-p99-ms", "5000")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert all(s["errors"] == s["requests"] > 0 for s in report["steps"])  # 401 each
    assert proc.stdout.splitlines()[-1].startswith("FAIL: no step meets the SLO p99 <= 5000 ms")


def test_a_batching_sweep_serves_each_setting_and_recommends_one(iris_package, tmp_path):
    proc, report = _sweep(
        tmp_path,
        "--batching-sweep",
        f"iris-served:{iris_package['version']}",
        "--max-batch-size",
        "1,16",
        "--max-wait-ms",
        "0",
        "--concurrency",
        "4",
        "--step-duration",
        "1",
        "--slo-p99-ms",
        "5000",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    settings = [(s["max_batch_size"], s["max_wait_ms"]) for s in report["settings"]]
    assert settings == [(1, 0.0), (16, 0.0)]
    assert all(
        s["server"].endswith("1 worker, batch " + str(b) + ", wait 0 ms")
        for s, (b, _) in zip(report["settings"], settings, strict=True)
    )
    knees = {(s["max_batch_size"], s["max_wait_ms"]): s["knee"]["rps"] for s in report["settings"]}
    best = max(knees, key=knees.get)
    assert report["recommended"] == {"max_batch_size": best[0], "max_wait_ms": best[1]}
    assert proc.stdout.splitlines()[-1].startswith(
        f"recommended: --max-batch-size {best[0]} --max-wait-ms 0 (knee "
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["batching-sweep.json", "batching-sweep.md", "batching-sweep.png"]


def test_a_batching_sweep_of_a_model_not_stored_is_one_line(tmp_path):
    proc, report = _sweep(tmp_path, "--batching-sweep", "no-such-model:latest")
    assert proc.returncode == 2 and report is None
    assert proc.stderr.startswith("nnship: error: model no-such-model:latest is not in the BentoML")
    assert len(proc.stderr.strip().splitlines()) == 1 and "serving" not in proc.stdout
