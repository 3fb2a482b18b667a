"""Batch jobs over HTTP: BentoML task endpoints on a real server, equal to `nnship predict`."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from nnship.batch.job import Options, predict
from nnship.package import load_package
from tests.server import iris_env, running_server

KEY = "jobs-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(iris_package, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("jobs")
    env = iris_env(
        iris_package,
        rate_limit="10",
        rate_burst="20",
        max_jobs="1",
        max_queued_jobs="1",
        max_job_bytes=str(4 << 20),
        max_body_bytes="20000",
        jobs_dir=str(jobs),
    )
    env["NNSHIP_API_KEY"] = KEY
    with running_server(env) as (url, log):
        yield url, jobs, log


def _rows(iris_package, n: int, seed: int = 0) -> pd.DataFrame:
    stats = iris_package["input"]["stats"]
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(s["min"], s["max"], n) for s in stats], axis=1)
    return pd.DataFrame(x, columns=iris_package["input"]["feature_names"])


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _call(method: str, url: str, **kw) -> httpx.Response:
    """A request that waits out the rate limit (429 rate_limited) and tries again."""
    for _ in range(50):
        r = httpx.request(method, url, timeout=60, **{"headers": AUTH, **kw})
        if r.status_code != 429 or r.json()["detail"][0]["type"] != "rate_limited":
            return r
        time.sleep(float(r.headers["retry-after"]))
    raise AssertionError(f"{url}: still rate limited")


def _submit(url: str, name: str, data: bytes, **fields) -> httpx.Response:
    return _call("POST", f"{url}/batch/submit", files={"file": (name, data)}, data=fields)


def _status(url: str, task_id: str) -> dict:
    r = _call("GET", f"{url}/batch/status", params={"task_id": task_id})
    assert r.status_code == 200, r.text
    return r.json()


def _wait(url: str, task_id: str, until=("completed", "failed"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = _status(url, task_id)
        if body["status"] in until or body.get("state") in until:
            return body
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not reach {until}: {body}")


def _run_job(url: str, name: str, data: bytes, **fields) -> tuple[dict, httpx.Response]:
    r = _submit(url, name, data, **fields)
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    status = _wait(url, task_id)
    return status, _call("GET", f"{url}/batch/get", params={"task_id": task_id})


def _reference(iris_package, tmp_path: Path, name: str, data: bytes, out: str):
    """`nnship predict` in this process on the same file: its summary and output table."""
    src = tmp_path / name
    src.write_bytes(data)
    pkg = load_package(f"iris-served:{iris_package['version']}", variants=[])
    summary = predict(
        Options(
            str(pkg.path),
            str(src),
            tmp_path / out,
            rejects=tmp_path / "rejects.jsonl",
            threads=1,
            progress=False,
        )
    )
    return summary, tmp_path / out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_job_gives_what_nnship_predict_gives(server, iris_package, tmp_path, fmt):
    url, _, _ = server
    df = _rows(iris_package, 3000, seed=1)
    data = _csv(df) if fmt == "csv" else _parquet(df)
    status, r = _run_job(url, f"rows.{fmt}", data)
    assert status["status"] == "completed" and status["state"] == "success", status
    assert status["summary"]["rows"] == 3000 and status["summary"]["rejects"] == 0
    assert status["summary"]["rows_per_s"] > 0 and status["rejects"] is None
    assert r.status_code == 200
    summary, want = _reference(iris_package, tmp_path, f"rows.{fmt}", data, f"want.{fmt}")
    assert status["summary"]["variant"] == summary.variant
    got = tmp_path / f"got.{fmt}"
    got.write_bytes(r.content)
    if fmt == "csv":
        assert r.content == want.read_bytes()
    else:
        assert pq.read_table(got).equals(pq.read_table(want))


def test_the_result_format_can_be_chosen(server, iris_package, tmp_path):
    url, _, _ = server
    df = _rows(iris_package, 50, seed=2)
    status, r = _run_job(url, "rows.csv", _csv(df), output_format="parquet")
    assert status["state"] == "success"
    got = tmp_path / "got.parquet"
    got.write_bytes(r.content)
    _, want = _reference(iris_package, tmp_path, "rows.csv", _csv(df), "want.parquet")
    assert pq.read_table(got).equals(pq.read_table(want))


def test_bad_rows_go_to_the_rejects(server, iris_package, tmp_path):
    url, _, _ = server
    df = _rows(iris_package, 20, seed=3)
    text = _csv(df).decode().splitlines()
    cells = text[5].split(",")
    cells[1] = "nan"
    text[5] = ",".join(cells)
    text[9] = text[9].replace(",", ",abc,", 1).rsplit(",", 1)[0]  # a word where a number goes
    data = ("\n".join(text) + "\n").encode()
    status, r = _run_job(url, "bad.csv", data)
    assert status["state"] == "success", status
    assert status["summary"]["rows"] == 20 and status["summary"]["rejects"] == 2
    task_id = status["task_id"]
    rejects = _call("GET", f"{url}/batch/rejects", params={"task_id": task_id})
    assert rejects.status_code == 200
    lines = [line for line in rejects.text.splitlines() if line]
    assert len(lines) == 2
    _reference(iris_package, tmp_path, "bad.csv", data, "want.csv")
    want = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [json.loads(line) for line in lines] == [{**w, "file": "input.csv"} for w in want]
    assert r.content == (tmp_path / "want.csv").read_bytes()


def test_a_malformed_file_fails_naming_the_problem(server, iris_package):
    url, _, _ = server
    status, r = _run_job(url, "rows.csv", b"sepal,petal\n1,2\n")
    assert status["status"] == "failed" and status["state"] == "failure", status
    assert "feature" in status["error"] or "column" in status["error"], status["error"]
    assert "\n" not in status["error"] and r.status_code == 400


def test_key_size_and_rate_limits_hold_on_every_task_route(server, iris_package):
    url, _, _ = server
    data = _csv(_rows(iris_package, 5))
    for method, path, kw in [
        ("POST", "/batch/submit", {"files": {"file": ("a.csv", data)}}),
        ("GET", "/batch/status", {"params": {"task_id": "0" * 32}}),
        ("GET", "/batch/get", {"params": {"task_id": "0" * 32}}),
        ("GET", "/batch/rejects", {"params": {"task_id": "0" * 32}}),
    ]:
        r = httpx.request(method, f"{url}{path}", timeout=30, **kw)
        assert r.status_code == 401 and r.json()["detail"][0]["type"] == "unauthorized", path
    big = b"x" * ((4 << 20) + 1)
    r = _call("POST", f"{url}/batch/submit", files={"file": ("big.csv", big)})
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "body_too_large"
    r = _call(
        "POST", f"{url}/batch/submit", content=data, headers={**AUTH, "content-type": "text/csv"}
    )
    assert r.status_code == 415
    r = _call("POST", f"{url}/batch", json={"file": "a,b\n1,2\n"})
    assert r.status_code == 404 and r.json()["detail"][0]["type"] == "batch_sync"
    with httpx.Client(headers=AUTH) as client:
        limited = [
            client.get(f"{url}/batch/status", params={"task_id": "0" * 32}) for _ in range(100)
        ]
    refused = [r for r in limited if r.status_code == 429]
    assert refused and refused[0].json()["detail"][0]["type"] == "rate_limited"
    time.sleep(3)  # let the bucket refill for the tests after this one


def test_unknown_and_malformed_task_ids_name_nothing_on_disk(server):
    url, _, _ = server
    for task_id in ["0" * 32, "../../etc/passwd", "..", ""]:
        r = _call("GET", f"{url}/batch/rejects", params={"task_id": task_id})
        assert r.status_code == 404 and r.json()["detail"][0]["type"] == "job_not_found"


def test_jobs_past_the_running_and_queued_limits_are_refused(server, iris_package):
    url, jobs, _ = server
    data = _parquet(_rows(iris_package, 20000, seed=4))
    first = _submit(url, "a.parquet", data).json()["task_id"]
    _wait(url, first, until=("running", "completed", "failed"))
    second = _submit(url, "b.parquet", data).json()["task_id"]
    assert _wait(url, second, until=("queued", "running", "completed", "failed"))["state"] in (
        "queued"
    ), "the second job should wait for the first"
    r = _submit(url, "c.parquet", data)
    assert r.status_code == 429 and r.json()["detail"][0]["type"] == "jobs_busy"
    assert "retry later" in r.json()["error"] and r.headers["retry-after"]
    for task_id in (first, second):
        assert _wait(url, task_id)["state"] == "success"
    assert {first, second} <= {p.name for p in jobs.iterdir()}  # one folder per job, by its id


def test_kept_columns_pass_through_and_never_become_options(server, iris_package, tmp_path):
    """`keep` copies identifier columns to the result as `nnship predict --keep` does; a name that
    looks like an option stays a column name (the job fails naming it), and writes nothing else."""
    url, _, _ = server
    df = _rows(iris_package, 40, seed=6)
    df.insert(0, "row_id", [f"r{i:03d}" for i in range(len(df))])
    df["batch"] = 7
    status, result = _run_job(url, "ids.csv", _csv(df), keep="row_id, batch")
    assert status["state"] == "success", status
    out = pd.read_csv(io.BytesIO(result.content))
    assert list(out.columns[:2]) == ["row_id", "batch"]
    assert out["row_id"].tolist() == df["row_id"].tolist() and set(out["batch"]) == {7}
    _, path = _reference(iris_package, tmp_path, "ids.csv", _csv(df), "ref.csv")
    reference = pd.read_csv(path)
    assert out.drop(columns=["row_id", "batch"]).equals(reference)
    evil = tmp_path / "evil.csv"
    status, _ = _run_job(url, "ids.csv", _csv(df), keep=f"--output={evil}")
    assert status["state"] == "failure" and f"--output={evil}" in status["error"], status
    assert not evil.exists()


def test_queued_and_running_jobs_can_be_cancelled(server, iris_package):
    """PUT /batch/cancel stops a queued job before it starts and a running job's process at once;
    neither leaves a result, the other job is untouched, and a finished job cannot be cancelled."""
    url, jobs, _ = server
    data = _parquet(_rows(iris_package, 20000, seed=5))
    running = _submit(url, "a.parquet", data).json()["task_id"]
    _wait(url, running, until=("running",))
    queued = _submit(url, "b.parquet", data).json()["task_id"]
    assert _wait(url, queued, until=("queued",))["state"] == "queued"
    r = _call("PUT", f"{url}/batch/cancel", params={"task_id": queued})
    assert r.status_code == 202 and r.json() == {"task_id": queued, "state": "cancelling"}
    status = _wait(url, queued, until=("cancelled",))
    assert status["status"] == "failed" and "cancelled" in status["error"]
    assert "started_at" not in json.loads((jobs / queued / "state.json").read_text())
    r = _call("PUT", f"{url}/batch/cancel", params={"task_id": running})
    assert r.status_code == 202
    status = _wait(url, running, until=("cancelled", "success"))
    assert status["state"] == "cancelled" and status["status"] == "failed"
    for task_id in (queued, running):
        assert not list((jobs / task_id).glob("result*")), "a cancelled job left a result"
        assert _call("GET", f"{url}/batch/get", params={"task_id": task_id}).status_code != 200
        children = [
            p
            for p in psutil.process_iter(["cmdline"])
            if any(task_id in part for part in p.info["cmdline"] or [])
        ]
        assert children == [], "the cancelled job's process is still running"
        r = _call("PUT", f"{url}/batch/cancel", params={"task_id": task_id})
        assert r.status_code == 409 and r.json()["detail"][0]["type"] == "job_finished"
    for task_id in ["0" * 32, "../../etc/passwd", ""]:
        r = _call("PUT", f"{url}/batch/cancel", params={"task_id": task_id})
        assert r.status_code == 404 and r.json()["detail"][0]["type"] == "job_not_found"
    r = httpx.put(f"{url}/batch/cancel", params={"task_id": running}, timeout=30)
    assert r.status_code == 401
    again, result = _run_job(url, "c.csv", _csv(_rows(iris_package, 30)))
    assert again["state"] == "success" and result.status_code == 200  # the slot was freed


def test_expired_jobs_leave_neither_files_nor_task_entries(iris_package, tmp_path):
    """Past NNSHIP_JOB_RETENTION_S a job's folder and BentoML's task entry (the uploaded file and the
    result it holds, kept 24 h by BentoML alone) are both gone once a later job has ended."""
    jobs = tmp_path / "jobs"
    env = iris_env(iris_package, job_retention_s="1", jobs_dir=str(jobs))
    env["BENTOML_RESULT_STORE"] = str(tmp_path / "tasks.db")
    data = _csv(_rows(iris_package, 20))
    with running_server(env) as (url, _):
        first = httpx.post(f"{url}/batch/submit", files={"file": ("a.csv", data)}, timeout=60)
        assert first.status_code == 200, first.text
        first_id = first.json()["task_id"]
        assert _wait_open(url, first_id)["state"] == "success"
        stored = sqlite3.connect(tmp_path / "tasks.db").execute("SELECT task_id FROM result")
        assert [row[0] for row in stored] == [first_id]
        time.sleep(1.5)
        second = httpx.post(f"{url}/batch/submit", files={"file": ("b.csv", data)}, timeout=60)
        assert second.status_code == 200, second.text
        second_id = second.json()["task_id"]
        assert _wait_open(url, second_id)["state"] == "success"
        for route in ("status", "get", "rejects"):
            r = httpx.get(f"{url}/batch/{route}", params={"task_id": first_id}, timeout=60)
            assert r.status_code == 404, (route, r.text)
        stored = sqlite3.connect(tmp_path / "tasks.db").execute("SELECT task_id FROM result")
        assert [row[0] for row in stored] == [second_id]
        assert [p.name for p in jobs.iterdir()] == [second_id]


def _wait_open(url: str, task_id: str, timeout: float = 120) -> dict:
    """The job's status once it has ended, on a server without an API key or rate limit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/batch/status", params={"task_id": task_id}, timeout=60).json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not end: {body}")
