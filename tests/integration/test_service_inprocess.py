"""The service's ASGI app in this process under Starlette's test client (BentoML's own loader)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from starlette.testclient import TestClient

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def app_client(iris_package):
    os.environ["NNSHIP_MODEL"] = f"iris-served:{iris_package['version']}"
    os.environ["NNSHIP_THREADS"] = "1"
    from _bentoml_impl.loader import load

    import service.runtime as runtime

    seen = {}
    original = runtime.Runtime.warm_up

    def spy(self, max_batch):
        from service.oip import STATE

        seen["published_during_warm_up"] = STATE.service is not None
        seen["sizes"] = original(self, max_batch)
        return seen["sizes"]

    runtime.Runtime.warm_up = spy
    try:
        svc = load("service.service:NnshipService", standalone_load=True)
        with TestClient(svc.to_asgi(is_main=True), raise_server_exceptions=False) as client:
            yield client, seen
    finally:
        runtime.Runtime.warm_up = original


def test_ready_after_warm_up_on_every_bucket(app_client):
    client, seen = app_client
    assert seen["sizes"] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert (
        seen["published_during_warm_up"] is False
    )  # neither /readyz nor /v2 see it before warm-up ends
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_predict_in_process(app_client):
    client, _ = app_client
    r = client.post("/predict", json={"inputs": [ROW, ROW]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    assert r.headers["x-request-id"]
    r = client.post("/predict", json={"inputs": [[1, 2, 3]]}, headers={"x-request-id": "abc-123"})
    assert r.status_code == 400 and r.json()["request_id"] == "abc-123"


def test_internal_failure_is_a_500_with_request_id_and_no_stack(app_client):
    client, _ = app_client
    from service.oip import STATE

    rt = STATE.service.runtime
    original = rt.run

    def boom(x):
        raise RuntimeError("simulated kernel failure in /secret/path")

    rt.run = boom
    try:
        for path, body in (
            ("/predict", {"inputs": [ROW]}),
            (
                "/v2/models/iris-served/infer",
                {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
            ),
        ):
            r = client.post(path, json=body, headers={"x-request-id": "req-42"})
            assert r.status_code == 500, path
            assert r.json() == {"error": "internal error", "request_id": "req-42"}
            assert "Traceback" not in r.text and "secret" not in r.text
    finally:
        rt.run = original
    assert client.post("/predict", json={"inputs": [ROW]}).status_code == 200  # still serving


def test_batched_answers_equal_single_answers(app_client):
    """Requests batched together get exactly the rows they sent back."""
    import concurrent.futures

    client, _ = app_client
    rng = np.random.default_rng(0)
    rows = (rng.normal(0, 1, (24, 4)) + np.array(ROW)).round(3).tolist()
    single = [
        client.post("/predict", json={"inputs": [r]}).json()["probabilities"][0] for r in rows
    ]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        batched = list(
            pool.map(lambda r: client.post("/predict", json={"inputs": [r]}).json(), rows)
        )
    np.testing.assert_allclose([b["probabilities"][0] for b in batched], single, atol=1e-6)


def _serve(args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "nnship.cli", "serve", *args, "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_tampered_model_refused_at_start(iris_package, tmp_path):
    from export.store import load_package

    src = load_package(f"iris-served:{iris_package['version']}").path
    pkg = tmp_path / "pkg"
    shutil.copytree(src, pkg)
    victim = pkg / iris_package["variants"][iris_package["default_variant"]]["file"]
    data = bytearray(victim.read_bytes())
    data[200] ^= 1
    victim.write_bytes(bytes(data))
    proc = _serve([str(pkg)])
    assert proc.returncode == 2
    assert f"{victim.name}: sha256 mismatch" in proc.stderr and "Traceback" not in proc.stderr
    victim.write_bytes(bytes(data[:50]))
    proc = _serve([str(pkg)])
    assert proc.returncode == 2 and "modified or truncated" in proc.stderr
    victim.unlink()
    proc = _serve([str(pkg)])
    assert proc.returncode == 2 and f"{victim.name}: missing" in proc.stderr


def test_unknown_model_refused(tmp_path):
    proc = _serve(["no-such-model:latest"])
    assert proc.returncode == 2 and "not in the BentoML model store" in proc.stderr


def test_require_gpu_fails_clearly_without_cuda(iris_package):
    import onnxruntime as ort

    from service.runtime import load_runtime, nvidia_device_present
    from service.settings import Settings

    settings = Settings(model=f"iris-served:{iris_package['version']}", require_gpu=True)
    if nvidia_device_present() and "CUDAExecutionProvider" in ort.get_available_providers():
        assert load_runtime(settings).provider == "CUDAExecutionProvider"
        return
    from nnship.errors import NnshipError

    with pytest.raises(
        NnshipError, match="--require-gpu: the model runs on CPUExecutionProvider, not CUDA"
    ):
        load_runtime(settings)


def test_cpu_provider_reported(iris_package):
    from service.runtime import load_runtime, nvidia_device_present
    from service.settings import Settings

    rt = load_runtime(Settings(model=f"iris-served:{iris_package['version']}", threads=1))
    assert rt.session.get_providers()[0] == rt.provider
    if not nvidia_device_present():
        assert (
            rt.provider == "CPUExecutionProvider" and rt.variant == iris_package["default_variant"]
        )
    assert rt.run(np.zeros((3, 4), np.float32)).shape == (3, 3)


@pytest.mark.gpu
def test_cuda_provider_really_runs(iris_package):
    from service.runtime import load_runtime, nvidia_device_present
    from service.settings import Settings

    if not nvidia_device_present():
        pytest.skip("no NVIDIA device")
    rt = load_runtime(Settings(model=f"iris-served:{iris_package['version']}", require_gpu=True))
    assert rt.provider == "CUDAExecutionProvider" and rt.on_gpu
    assert rt.run(np.zeros((5, 4), np.float32)).shape == (5, 3)
