"""The soak's one-minute version: ~50% of capacity for 60 s, no errors, no worker memory growth."""

import json
import subprocess
import sys


def test_one_minute_soak(iris_package, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "nnship.loadtests.soak",
        "--duration",
        "60",
        "--capacity-seconds",
        "5",
    ]
    cmd += ["--model", f"iris-served:{iris_package['version']}", "--report-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "soak.json").read_text())
    s = result["summary"]
    assert s["errors"] == 0 and s["requests"] >= 60 * s["target_rps"] * 0.95
    assert s["rss_growth"] is not None and s["rss_growth"] < 0.10
    assert s["lag_mean_ms"] is not None  # the worker's event-loop lag reached /metrics
    assert len(result["windows"]) >= 12 and all(w["rss_mb"] for w in result["windows"])
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"
    assert "**PASS**" in (tmp_path / "soak.md").read_text()
