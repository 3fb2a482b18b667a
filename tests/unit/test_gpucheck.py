"""The GPU check: its no-GPU run for real, and the measurement, parsing and report code its GPU
branches share, run here on the CPU provider."""

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nnship.export.variants import build_fp16
from nnship.loadtests import gpucheck as g
from nnship.loadtests.wrk import parse_wrk, wrk_ms
from nnship.onnxrt import CPU, CUDA

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:3000
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.91ms    2.10ms  41.23ms   88.12%
    Req/Sec     4.07k   312.55     4.61k    71.00%
  Latency Distribution
     50%    7.52ms
     75%    8.61ms
     90%   10.02ms
     99%   15.40ms
  81012 requests in 10.01s, 14.91MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   8093.11
Transfer/sec:      1.49MB
"""

NVIDIA_SMI = """GPU 0: NVIDIA H200 (UUID: GPU-6b1f2c1e-0d2a-4bb5-9e1c-0a1b2c3d4e5f)
GPU 1: NVIDIA H200 (UUID: GPU-7c2a3d2f-1e3b-4cc6-8f2d-1b2c3d4e5f60)
"""


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A 4-feature, 3-class linear classifier as an ONNX file with nnship's input/output names."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["z"]),
            helper.make_node("Add", ["z", "b"], ["output"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    folder = tmp_path_factory.mktemp("linear")
    path = folder / "fp32.onnx"
    onnx.save(model, str(path))
    build_fp16(path, folder / "fp16.onnx")
    x = rng.normal(0, 1, (200, 4)).astype(np.float32)
    y = (x @ w + b).argmax(1)
    return path, folder / "fp16.onnx", x, y


def test_without_a_gpu_it_says_so_writes_the_report_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, whatever the machine has
    out = tmp_path / "reports" / "gpu"
    assert g.main([str(out)]) == 0
    assert capsys.readouterr().out.strip() == "no NVIDIA GPU: nothing to check"
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["gpu"] is False and report["devices"] == [] and report["checks"] == {}
    assert report["reason"] == g.NO_GPU
    assert report["environment"]["onnxruntime"]
    md = (out / "gpu-check.md").read_text()
    assert md.startswith("# GPU check") and g.NO_GPU in md


def test_nvidia_smi_list_and_cuda_visible_devices():
    names = g.parse_nvidia_smi(NVIDIA_SMI)
    assert names == ["NVIDIA H200", "NVIDIA H200"]
    assert g.parse_nvidia_smi("No devices were found\n") == []
    assert g.visible(names, None) == names
    assert g.visible(names, "") == []
    assert g.visible(names, "1") == ["NVIDIA H200"]
    assert g.visible(names, "0,7") == ["NVIDIA H200"]  # an index past the list shows nothing
    assert g.visible(names, "GPU-6b1f2c1e") is None  # UUIDs: left to CUDA


def test_one_worker_per_gpu_each_sees_its_own_device():
    envs = g.worker_envs(3, {"BENTOML_HOME": "/x"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2"]
    assert all(e["NNSHIP_WORKERS"] == "1" and e["BENTOML_HOME"] == "/x" for e in envs)
    assert g.worker_envs(0) == []


def test_wrk_latencies_of_seconds_padded_to_their_column_are_parsed():
    padded = WRK_OUTPUT.replace("15.40ms", "1.45s ").replace("10.02ms", "1.02s  ")
    r = parse_wrk(padded)
    assert (r["p90_ms"], r["p99_ms"]) == pytest.approx((1020.0, 1450.0))


def test_wrk_output_is_parsed():
    """wrk's output, read by the serving benchmark's parser, which the GPU check runs wrk through."""
    r = parse_wrk(WRK_OUTPUT)
    assert r == {
        "rps": 8093.11,
        "p50_ms": 7.52,
        "p90_ms": 10.02,
        "p99_ms": 15.40,
        "requests": 81012,
        "errors": 7,
    }
    assert [wrk_ms(t) for t in ("812.00us", "1.20ms", "2.01s", "1.00m")] == pytest.approx(
        [0.812, 1.2, 2010.0, 60000.0]
    )
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:3000 Connection refused\n")


def test_latency_summary():
    r = g.latency_summary([0.001, 0.002, 0.003, 0.010], errors=1, seconds=2.0)
    assert r["rps"] == 2.0 and r["errors"] == 1
    assert r["p50_ms"] == pytest.approx(2.5) and 9.0 < r["p99_ms"] <= 10.0
    assert g.latency_summary([], 3, 1.0) == {
        "rps": 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "errors": 3,
    }


async def _app(scope, receive, send):
    """An ASGI app that answers POST /predict with 200 after reading the body, anything else 404."""
    assert scope["type"] == "http"
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    ok = scope["path"] == "/predict" and scope["method"] == "POST" and body.startswith(b"{")
    await send({"type": "http.response.start", "status": 200 if ok else 404, "headers": []})
    await send({"type": "http.response.body", "body": b'{"predictions": [0]}'})


def test_http_load_generator_counts_answers_and_errors():
    import httpx

    transport = httpx.ASGITransport(app=_app)
    r = g.http_load("http://t", ['{"inputs": [[0]]}'], clients=4, seconds=0.3, transport=transport)
    assert r["tool"] == "httpx" and r["clients"] == 4 and r["processes"] == 1
    assert r["rps"] > 10 and r["errors"] == 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    bad = g.http_load("http://t", ["not json"], clients=2, seconds=0.2, transport=transport)
    assert bad["rps"] == 0 and bad["errors"] > 0 and bad["p50_ms"] is None


def test_provider_comparison_on_the_cpu_and_a_silent_fallback_is_caught(linear):
    path, _, x, _ = linear
    r = g.compare_providers(path, x, CPU)
    assert r["active"] == CPU and r["max_abs_prob_diff_vs_cpu"] == 0.0 and r["passed"]
    assert r["rows"] == 200
    # this onnxruntime build has no CUDA provider: asking for it runs on the CPU, which must fail
    fallback = g.compare_providers(path, x, CUDA)
    assert fallback["active"] == CPU and not fallback["passed"]


def test_fp16_parity_against_fp32(linear):
    fp32, fp16, x, y = linear
    r = g.variant_parity(
        g.provider_session(fp32, CPU), g.provider_session(fp16, CPU), x, y, "classification"
    )
    assert r["metric"] == "accuracy" and r["fp32"] == 1.0
    assert 0 < r["max_abs_prob_diff"] < 1e-2 and r["agreement"] > 0.97
    assert abs(r["fp16"] - r["fp32"]) <= 0.03
    assert r["providers"] == {"fp32": CPU, "fp16": CPU}


def test_io_bound_and_plain_runs_agree_and_are_measured(linear):
    path, _, x, _ = linear
    session = g.provider_session(path, CPU)
    big = g.resize(x, g.BIG)
    assert big.shape == (1024, 4) and big.flags.c_contiguous
    np.testing.assert_allclose(
        g.bound_runner(session, "cpu")(big), g.plain_runner(session)(big), atol=1e-6
    )
    assert g.rows_per_second(g.bound_runner(session, "cpu"), big, 0.05) > 1024


def test_a_batch_job_against_in_memory_runs_on_the_cpu_provider(tmp_path):
    from tests.batchpkg import linear_package

    package = linear_package(tmp_path / "pkg")
    x = np.random.default_rng(1).uniform(0, 10, (300, 3)).astype(np.float32)
    f = g.batch_job_figures(package, x, 5_000, tmp_path)
    assert (f["provider"], f["in_memory_provider"], f["batch_size"]) == (CPU, CPU, 1024)
    assert f["rows"] == f["predicted"] == 5_000
    assert f["max_abs_prob_diff_vs_cpu"] < 1e-6
    assert f["job_rows_per_s"] > 0 and f["in_memory_rows_per_s"] > 0
    assert f["ratio"] == f["job_rows_per_s"] / f["in_memory_rows_per_s"]


def test_checks_record_their_outcome_and_never_hang(tmp_path):
    def slow():
        time.sleep(5)
        return {}

    assert g.run_check(lambda: {"a": 1}, 5)["figures"] == {"a": 1}
    t = time.perf_counter()
    r = g.run_check(slow, 0.2)
    assert r["status"] == "timeout" and time.perf_counter() - t < 2
    assert g.run_check(lambda: 1 / 0, 5) | {"seconds": 0} == {
        "status": "failed",
        "reason": "ZeroDivisionError: division by zero",
        "seconds": 0,
    }
    ctx = g.Context(["NVIDIA H200"], tmp_path, 0.1, 1, models_error="train: out of memory")
    for _, fn, _ in g.CHECKS:
        r = g.run_check(lambda fn=fn: fn(ctx), 5)
        assert r["status"] == "unavailable" and "out of memory" in r["reason"]


def test_report_rendering_from_figures():
    report = {
        "gpu": True,
        "started": "2026-12-01T02:00:00+00:00",
        "seconds": 312.4,
        "devices": ["NVIDIA H200"],
        "environment": {
            "onnxruntime": "1.31.1",
            "torch": "2.13.0",
            "torch_cuda": "13.0",
            "wrk": False,
        },
        "checks": {
            "cuda-provider": {
                "status": "ok",
                "seconds": 3.2,
                "figures": {
                    "cnn": {"active": CUDA, "max_abs_prob_diff_vs_cpu": 2.5e-7, "passed": True}
                },
            },
            "tensorrt": {"status": "unavailable", "seconds": 0.0, "reason": "no TensorRT | here"},
            "ort-vs-torch": {
                "status": "ok",
                "seconds": 40.0,
                "figures": {
                    "lstm": {"ort-cuda-fp16": {"throughput_rps": 1234567.8, "p50_ms": 0.21}}
                },
            },
        },
    }
    md = g.render_markdown(report)
    assert (
        "1 GPU(s): NVIDIA H200" in md
        and "onnxruntime 1.31.1" in md
        and "load generator: httpx" in md
    )
    assert "| tensorrt | unavailable | 0.0 | no TensorRT \\| here |" in md
    assert "| cnn.active | CUDAExecutionProvider |" in md
    assert "| cnn.max_abs_prob_diff_vs_cpu | 2.5e-07 |" in md
    assert "| lstm.ort-cuda-fp16.throughput_rps | 1,234,568 |" in md
    assert "| lstm.ort-cuda-fp16.p50_ms | 0.21 |" in md
    assert "## tensorrt" not in md  # no figures, no section
