"""The sweep's knee, verdicts and report on synthetic steps (the servers are in
tests/integration/test_loadtest_cli.py)."""

import argparse
import json

import numpy as np
import pytest

from nnship.loadtests.sweep import (
    Setting,
    Step,
    Sweep,
    batching_verdict,
    bodies_of,
    float_list,
    int_list,
    markdown,
    recommend,
    write_batching,
    write_sweep,
)
from nnship.loadtests.wrk import lua_script

PNG = b"\x89PNG\r\n\x1a\n"


def step(c: int, rps: float, p99: float, errors: int = 0) -> Step:
    return Step(c, rps, rps * 2, p99 / 4, p99 / 2, p99, int(rps), errors)


def swept(*steps: Step, slo: float = 50.0) -> Sweep:
    return Sweep("iris", "http://127.0.0.1:3000", slo, 2, 1, list(steps))


def test_the_knee_is_the_highest_throughput_within_the_slo():
    result = swept(
        step(1, 900, 2),
        step(8, 3000, 20),
        step(16, 2800, 30),  # past the peak: less throughput, still within
        step(32, 4000, 80),  # the most throughput, over the SLO
        step(64, 5000, 10, errors=3),  # within the latency bound, but not without errors
    )
    assert result.knee.concurrency == 8
    passed, line = result.verdict()
    assert not passed  # errors at 64 clients fail the sweep, yet the knee is reported
    assert line == (
        "FAIL: 3 errors at 64 clients (non-2xx answers or socket errors); knee: 8 clients, "
        "3,000 req/s (6,000 rows/s) at p99 20.0 ms (SLO p99 <= 50 ms)"
    )
    clean = swept(*result.steps[:4])
    assert clean.verdict() == (
        True,
        "knee: 8 clients, 3,000 req/s (6,000 rows/s) at p99 20.0 ms (SLO p99 <= 50 ms)",
    )
    assert swept(step(1, 100, 5), step(2, 100, 6)).knee.concurrency == 1  # a tie: fewer clients


def test_no_step_within_the_slo_fails_with_the_reason():
    result = swept(step(1, 900, 60), step(2, 1500, 55), step(4, 1600, 70, errors=1))
    assert result.knee is None
    assert result.verdict() == (
        False,
        "FAIL: no step meets the SLO p99 <= 50 ms with zero errors (lowest p99 55.0 ms at "
        "2 clients; errors at 4 clients)",
    )
    assert swept().verdict() == (False, "no step ran")
    report = result.to_json()
    assert report["knee"] is None and report["passed"] is False
    assert [s["meets_slo"] for s in report["steps"]] == [False, False, False]


def test_the_report_files_are_whole_and_replaced_atomically(tmp_path):
    result = swept(step(1, 900, 2), step(8, 3000, 20), step(32, 4000, 80))
    paths = write_sweep(result, tmp_path / "out")
    assert [p.name for p in paths] == ["sweep.json", "sweep.md", "sweep.png"]
    report = json.loads(paths[0].read_text())
    assert report["knee"]["concurrency"] == 8 and report["generator"] == "wrk"
    assert report["steps"][2] == {
        "concurrency": 32,
        "rps": 4000,
        "rows_per_s": 8000,
        "p50_ms": 20.0,
        "p90_ms": 40.0,
        "p99_ms": 80,
        "requests": 4000,
        "errors": 0,
        "meets_slo": False,
    }
    assert "| 8 | 3,000 | 6,000 | 5.00 | 10.00 | 20.00 | 0 | yes (knee) |" in paths[1].read_text()
    assert paths[2].read_bytes().startswith(PNG)
    before = {p.name: p.read_bytes() for p in paths}
    broken = swept(step(1, 900, float("nan")))  # JSON refuses NaN: the write fails midway
    with pytest.raises(ValueError):
        write_sweep(broken, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # no temp left


def test_markdown_names_the_server_and_the_slo():
    text = markdown(swept(step(1, 900, 2)))
    assert text.startswith("# Load sweep: iris at http://127.0.0.1:3000\n")
    assert "SLO: p99 <= 50 ms with zero errors" in text


def test_the_batching_sweep_recommends_the_highest_knee(tmp_path):
    results = [
        (Setting(1, 0.0), swept(step(1, 900, 2), step(8, 2000, 30))),
        (Setting(32, 0.0), swept(step(1, 850, 3), step(8, 3500, 40), step(32, 5000, 90))),
        (Setting(32, 2.0), swept(step(1, 400, 60))),
    ]
    best = recommend(results)
    assert best[0] == Setting(32, 0.0)
    assert batching_verdict(results, 50.0) == (
        True,
        "recommended: --max-batch-size 32 --max-wait-ms 0 (knee 3,500 req/s at 8 clients, "
        "p99 40.0 ms; SLO p99 <= 50 ms)",
    )
    assert batching_verdict(results[2:], 50.0) == (
        False,
        "FAIL: no batching setting has a step within the SLO p99 <= 50 ms with zero errors",
    )
    args = argparse.Namespace(
        batching_sweep="iris:latest",
        step_duration=1,
        concurrency=[1, 8, 32],
        rows_per_request=2,
        slo_p99_ms=50.0,
    )
    paths = write_batching(results, args, tmp_path, batching_verdict(results, 50.0)[1])
    report = json.loads(paths[0].read_text())
    assert report["recommended"] == {"max_batch_size": 32, "max_wait_ms": 0.0}
    assert [s["knee"] and s["knee"]["rps"] for s in report["settings"]] == [2000, 3500, None]
    assert "| 32 | 2 | - | - | - | 0 |" in paths[1].read_text()
    assert paths[2].read_bytes().startswith(PNG)


def test_bodies_hold_the_rows_in_order(tmp_path):
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    bodies = bodies_of(rows, 4)
    assert json.loads(bodies[0]) == {"inputs": [[0, 1], [2, 3], [4, 5], [6, 7]]}
    assert json.loads(bodies[1]) == {"inputs": [[8, 9], [10, 11], [0, 1], [2, 3]]}
    assert len(bodies_of(rows, 1)) == 6
    script = lua_script(bodies, tmp_path / "s.lua", {"Authorization": 'Bearer k"]]'})
    text = script.read_text()
    assert '"Bearer k"]]"' not in text  # the key is escaped byte by byte, whatever it holds
    assert "\\66\\101\\97\\114\\101\\114" in text  # "Bearer"


def test_lists_of_steps_and_settings():
    assert int_list("1,2, 4") == [1, 2, 4]
    assert float_list("0,1.5") == [0.0, 1.5]
    for bad in ("0,2", "a", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            int_list(bad)
    for bad in ("-1", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            float_list(bad)
