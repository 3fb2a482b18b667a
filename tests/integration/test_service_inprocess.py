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
def service_app(iris_package):
    """The in-process app on the int8-dynamic variant: the one whose rows couple within a batch."""
    from _bentoml_impl.loader import load

    import nnship.service.runtime as runtime

    seen = {}
    original = runtime.Runtime.warm_up

    def spy(self, max_batch):
        from nnship.service.oip import STATE

        seen["published_during_warm_up"] = STATE.service is not None
        seen["sizes"] = original(self, max_batch)
        return seen["sizes"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NNSHIP_MODEL", f"iris-served:{iris_package['version']}")
        mp.setenv("NNSHIP_THREADS", "1")
        mp.setenv("NNSHIP_VARIANT", "int8-dynamic")
        mp.setattr(runtime.Runtime, "warm_up", spy)
        svc = load("nnship.service.service:NnshipService", standalone_load=True)
        app = svc.to_asgi(is_main=True)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, seen, app


@pytest.fixture(params=["asgi", "bentoml"])
def app_client(request, service_app, monkeypatch):
    """The app with /predict answered by nnship's ASGI endpoint, then by BentoML's API layer."""
    from nnship.service.endpoint import PredictEndpoint

    client, seen, app = service_app
    client.get("/livez")  # Starlette builds its middleware stack on the first request
    layer = app.middleware_stack
    while not isinstance(layer, PredictEndpoint):
        layer = layer.app
    assert layer.enabled  # the default
    monkeypatch.setattr(layer, "enabled", request.param == "asgi")
    yield client, {**seen, "route": request.param}


def test_ready_after_warm_up_on_every_bucket(app_client):
    client, seen = app_client
    assert seen["sizes"] == [1, 2, 4, 8, 16, 32, 64, 128]
    # neither /readyz nor /v2 see the service before warm-up ends
    assert seen["published_during_warm_up"] is False
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_predict_in_process(app_client):
    client, _ = app_client
    r = client.post("/predict", json={"inputs": [ROW, ROW]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    assert r.headers["x-request-id"]
    r = client.post("/predict", json={"inputs": [[1, 2, 3]]}, headers={"x-request-id": "abc-123"})
    assert r.status_code == 400 and r.json()["request_id"] == "abc-123"
    assert r.json()["detail"][0]["type"] == "shape"


def test_both_routes_give_the_runtime_s_answers(app_client):
    """Same contract either way: labels and probabilities equal ONNX Runtime's own, batch by batch."""
    client, _ = app_client
    from nnship.service.oip import STATE

    svc = STATE.service
    rng = np.random.default_rng(1)
    x = (rng.normal(0, 0.5, (7, 4)) + np.array(ROW)).round(3)
    r = client.post("/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    logits = svc.runtime.run(x.astype(np.float32))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert body["predictions"] == [svc.labels[i] for i in p.argmax(1)]
    np.testing.assert_allclose(body["probabilities"], p, atol=2e-6)
    assert (body["model"], body["variant"]) == ("iris-served", svc.runtime.variant)
    # the body's envelope: either route names the rule broken
    for raw, rule in (
        (b'{"rows": [[1, 2, 3, 4]]}', "missing"),
        (b'{"inputs": [[5.1, 3.5, 1.4, 0.2]], "top_k": 2}', "unknown_field"),
        (b"[[5.1, 3.5, 1.4, 0.2]]", "object_required"),
        (b'{"inputs": [[1, 2', "json"),
    ):
        r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["detail"][0]["type"] == rule, r.text


BAD_BODIES = [
    b'{"inputs": [[5.1, 3.5, 1.4, 0.2]], "top_k": 2}',  # unknown top-level field
    b'{"inputs": [[5.1, 3.5, 1.4, 0.2]], "Inputs": []}',
    b'{"rows": [[1, 2, 3, 4]]}',  # inputs missing
    b"{}",
    b'{"inputs": "5.1, 3.5, 1.4, 0.2"}',  # wrong types
    b'{"inputs": [["5.1", 3.5, 1.4, 0.2]]}',
    b'{"inputs": [[true, 3.5, 1.4, 0.2]]}',
    b'{"inputs": [[null, 3.5, 1.4, 0.2]]}',
    b'{"inputs": {"a": 1}}',
    b'{"inputs": null}',
    b'{"inputs": [[1, 2, 3]]}',  # shapes and sizes
    b'{"inputs": []}',
    b'{"inputs": [5.1, 3.5, 1.4, 0.2]}',
    b'{"inputs": [[NaN, 3.5, 1.4, 0.2]]}',  # values
    b'{"inputs": [[1e39, 3.5, 1.4, 0.2]]}',
    b'{"inputs": [[' + b"9" * 400 + b", 3.5, 1.4, 0.2]]}",
    b"[[5.1, 3.5, 1.4, 0.2]]",  # not an object, not JSON, not UTF-8
    b'"inputs"',
    b'{"inputs": [[1, 2',
    b"\xff\xfe{}",
    b"",
]


@pytest.mark.parametrize("raw", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_both_predict_routes_refuse_bad_bodies_alike(service_app, raw):
    """nnship's endpoint and BentoML's route: the same status, body and reason for each bad body."""
    from nnship.service.endpoint import PredictEndpoint

    client, _, app = service_app
    client.get("/livez")
    layer = app.middleware_stack
    while not isinstance(layer, PredictEndpoint):
        layer = layer.app
    answers = []
    for enabled in (True, False):
        layer.enabled = enabled
        try:
            r = client.post(
                "/predict",
                content=raw,
                headers={"content-type": "application/json", "x-request-id": "same"},
            )
        finally:
            layer.enabled = True
        answers.append((r.status_code, r.json(), r.headers.get("x-nnship-reject")))
    fast, bentoml_route = answers
    assert fast[0] == 400 and fast[2] is not None, fast
    assert bentoml_route == fast


def test_internal_failure_is_a_500_with_request_id_and_no_stack(app_client, monkeypatch):
    client, _ = app_client
    from nnship.service.oip import STATE

    def boom(x):
        raise RuntimeError("simulated kernel failure in /secret/path")

    with monkeypatch.context() as mp:
        mp.setattr(STATE.service.runtime, "run", boom)
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
    assert client.post("/predict", json={"inputs": [ROW]}).status_code == 200  # still serving


def test_batched_answers_equal_single_answers(app_client):
    """Requests batched together get exactly the answers they would get alone, even on a variant
    whose dynamic quantization would mix rows that share an inference call."""
    import concurrent.futures

    from nnship.service.oip import STATE

    client, _ = app_client
    assert STATE.service.runtime.variant == "int8-dynamic"
    assert not STATE.service.runtime.batch_independent
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
    from nnship.package import load_package

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

    from nnship.service.runtime import load_runtime, nvidia_device_present
    from nnship.service.settings import Settings

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
    from nnship.service.runtime import load_runtime, nvidia_device_present
    from nnship.service.settings import Settings

    rt = load_runtime(Settings(model=f"iris-served:{iris_package['version']}", threads=1))
    assert rt.session.get_providers()[0] == rt.provider
    if not nvidia_device_present():
        assert (
            rt.provider == "CPUExecutionProvider" and rt.variant == iris_package["default_variant"]
        )
    assert rt.run(np.zeros((3, 4), np.float32)).shape == (3, 3)


def test_batch_coupling_is_detected_from_the_graph(iris_package):
    """Dynamic int8 derives one activation scale per input tensor: batched rows change each
    other's outputs, which is why the service runs such a variant one request at a time."""
    from nnship.service.runtime import load_runtime
    from nnship.service.settings import Settings

    rng = np.random.default_rng(3)
    x = (rng.normal(0, 0.3, (16, 4)) + np.array(ROW)).astype(np.float32)
    x[7] = [7.9, 4.4, 6.9, 2.5]  # one wide row stretches the batch's quantization range
    gaps = {}
    for variant in ("fp32", "int8-dynamic"):
        rt = load_runtime(
            Settings(model=f"iris-served:{iris_package['version']}", variant=variant, threads=1)
        )
        alone = np.concatenate([rt.run(x[i : i + 1]) for i in range(len(x))])
        gaps[variant] = float(np.abs(rt.run(x) - alone).max())
        assert rt.batch_independent == (variant == "fp32"), rt.coupled_ops
    assert "DynamicQuantizeLinear" in rt.coupled_ops
    assert gaps["fp32"] < 1e-5 and gaps["int8-dynamic"] > 1e-3, gaps


@pytest.mark.gpu
def test_cuda_provider_really_runs(iris_package):
    from nnship.service.runtime import load_runtime, nvidia_device_present
    from nnship.service.settings import Settings

    if not nvidia_device_present():
        pytest.skip("no NVIDIA device")
    rt = load_runtime(Settings(model=f"iris-served:{iris_package['version']}", require_gpu=True))
    assert rt.provider == "CUDAExecutionProvider" and rt.on_gpu
    assert rt.run(np.zeros((5, 4), np.float32)).shape == (5, 3)
