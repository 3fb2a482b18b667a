"""The service as users meet it: a real `bentoml serve` subprocess on loopback."""

import json
import random
import string

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nnship.onnxrt import cpu_session
from nnship.package import load_package
from nnship.training.data import load_dataset, split
from tests.server import iris_env, running_server

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def server(iris_package):
    env = iris_env(iris_package, max_rows="64", max_body_bytes="20000")
    with running_server(env) as (url, log):
        yield url, log


@pytest.fixture(scope="module")
def guarded(iris_package):
    env = {
        "NNSHIP_MODEL": "iris-served:latest",
        "NNSHIP_API_KEY": "s3cret-key",
        "NNSHIP_RATE_LIMIT": "2",
        "NNSHIP_RATE_BURST": "4",
        "NNSHIP_STRICT_RANGE": "true",
        "NNSHIP_BOUND_METRIC_PATHS": "false",
        "NNSHIP_THREADS": "1",
        "NNSHIP_TRACING": "true",  # /predict then goes through BentoML's API layer
    }
    with running_server(env) as (url, _):
        yield url


def post(url, body, **kw):
    return httpx.post(f"{url}/predict", json=body, timeout=30, **kw)


def metrics(url):
    return {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}


def counter(fams, name, **labels):
    return sum(
        s.value
        for s in fams[name].samples
        if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_predict_matches_onnx_runtime(server, iris_package):
    url, _ = server
    x = split(load_dataset("iris")).x_test[:5]
    r = post(url, {"inputs": x.tolist()})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"model", "version", "variant", "predictions", "probabilities"}
    assert body["model"] == "iris-served" and body["version"] == iris_package["version"]
    pkg = load_package(f"iris-served:{iris_package['version']}")
    logits = cpu_session(pkg.variant_path(body["variant"])).run(None, {"input": x})[0]
    labels = iris_package["output"]["labels"]
    assert body["predictions"] == [labels[i] for i in logits.argmax(1)]
    p = np.asarray(body["probabilities"])
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(1), logits.argmax(1))


def test_ready_only_after_warm_up(server):
    _, log = server
    text = "\n".join(log)
    assert "warmed up on batch sizes [1, 2, 4, 8, 16, 32, 64, 128]" in text


BIG = "[" + ",".join(["[1,2,3,4]"] * 65) + "]"
CASES = [
    # (raw body, status, rule, loc prefix)
    ('{"inputs": [[1, 2, 3]]}', 400, "shape", ["inputs", 0]),
    ('{"inputs": [1, 2, 3, 4]}', 400, "rank", ["inputs", 0]),
    ('{"inputs": [[[1, 2, 3, 4]]]}', 400, "number_required", ["inputs", 0, 0]),
    ('{"inputs": [[1, 2, "3", 4]]}', 400, "number_required", ["inputs", 0, 2]),
    ('{"inputs": [[1, 2, true, 4]]}', 400, "number_required", ["inputs", 0, 2]),
    ('{"inputs": [[1, 2, null, 4]]}', 400, "number_required", ["inputs", 0, 2]),
    ('{"inputs": [[1, 2, NaN, 4]]}', 400, "finite_required", ["inputs", 0, 2]),
    ('{"inputs": [[1, 2, Infinity, 4]]}', 400, "finite_required", ["inputs", 0, 2]),
    ('{"inputs": [[1, 2, -Infinity, 4]]}', 400, "finite_required", ["inputs", 0, 2]),
    ('{"inputs": [[1, 2, 1e39, 4]]}', 400, "float32_range", ["inputs", 0, 2]),
    ('{"inputs": []}', 400, "non_empty_batch", ["inputs"]),
    ('{"inputs": ' + BIG + "}", 400, "max_rows", ["inputs"]),
    ('{"inputs": "1,2,3,4"}', 400, "rank", ["inputs"]),
    ('{"rows": [[1, 2, 3, 4]]}', 400, "missing", ["inputs"]),
    ('{"inputs": [[1, 2, 3, 4]], "top_k": 1}', 400, "unknown_field", ["top_k"]),
    ("[[1, 2, 3, 4]]", 400, "object_required", []),
    ('{"inputs": [[1, 2', 400, "json", []),
    ('\ufeff{"inputs": [[1, 2, 3, 4]]}', 400, "json", []),  # UTF-8 byte-order mark
    ('{"inputs": [[1, 2, 3, 4]], "\\udfff": 1}', 400, "unknown_field", ["\\udfff"]),
    ('{"inputs": [[1, 2, 3, ' + "9" * 400 + "]]}", 400, "float32_range", ["inputs", 0, 3]),
]


@pytest.mark.parametrize(("raw", "status", "rule", "loc"), CASES, ids=[c[0][:28] for c in CASES])
def test_validation_rules(server, raw, status, rule, loc):
    url, _ = server
    r = httpx.post(f"{url}/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    body = r.json()
    assert "Traceback" not in r.text and body["error"]
    if rule:
        d = body["detail"][0]
        assert d["type"] == rule and d["loc"][: len(loc)] == loc, body
        assert r.headers["x-request-id"]


def test_body_limit_and_content_type(server):
    url, _ = server
    r = httpx.post(
        f"{url}/predict",
        content=b'{"inputs": [' + b"[1,2,3,4]," * 3000 + b"[1,2,3,4]]}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "body_too_large"

    def chunks():  # no content-length: the limit holds while reading
        yield b'{"inputs": ['
        for _ in range(5000):
            yield b"[1,2,3,4],"
        yield b"[1,2,3,4]]}"

    r = httpx.post(f"{url}/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = httpx.post(
        f"{url}/predict",
        content=json.dumps({"inputs": [ROW]}),
        headers={"content-type": "text/plain"},
    )
    assert r.status_code == 415 and r.json()["detail"][0]["type"] == "content_type"
    assert post(url, {"inputs": [ROW]}).status_code == 200  # still serving


def test_open_inference_protocol_with_tritonclient(server, iris_package):
    import tritonclient.http as triton

    url, _ = server
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris-served")
    meta = client.get_model_metadata("iris-served")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    assert {o["name"] for o in meta["outputs"]} == {"output", "probabilities"}
    params = meta["parameters"]
    assert params["feature_names"] == iris_package["input"]["feature_names"]
    for key in ("mean", "std", "min", "max"):
        assert params["feature_stats"][key] == [s[key] for s in iris_package["input"]["stats"]]
    x = split(load_dataset("iris")).x_test[:3]
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer("iris-served", [inp], outputs=outs)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 3)
    ref = np.asarray(post(url, {"inputs": x.tolist()}).json()["probabilities"])
    np.testing.assert_allclose(probs, ref, atol=1e-5)


INFER = "/v2/models/iris-served/infer"


def tensor(**overrides):
    """A v2 request body with one valid iris tensor, changed by `overrides`."""
    return {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW, **overrides}]
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "rule"),
    [
        (INFER, tensor(datatype="FP64"), 400, "datatype"),
        (INFER, tensor(name="x"), 400, "input_name"),
        (INFER, tensor(shape=[2, 4]), 400, "size_matches_shape"),
        (INFER, tensor(shape=[1, 5], data=[*ROW, 1]), 400, "shape"),
        (INFER, tensor(data=[1, 2, False, 4]), 400, "number_required"),
        (INFER, tensor(parameters={"binary_data_size": 16}), 400, "binary_or_json_data"),
        (
            INFER,
            tensor(data=None, parameters={"binary_data_size": 16}),
            400,
            "binary_size_matches_body",
        ),
        (
            INFER,
            tensor(data=None, parameters={"binary_data_size": 12}),
            400,
            "binary_size_matches_shape",
        ),
        (INFER, tensor(parameters=[1]), 400, "object_required"),
        ("/v2/models/other/infer", {"inputs": []}, 404, None),
    ],
)
def test_v2_rejections(server, path, body, status, rule):
    url, _ = server
    r = httpx.post(url + path, json=body)
    assert r.status_code == status, r.text
    if rule:
        assert r.json()["detail"][0]["type"] == rule


def test_metrics_families_move_and_stay_bounded(server):
    url, _ = server
    before = metrics(url)
    for name in (
        "nnship_inference_seconds",
        "nnship_batch_size",
        "nnship_requests_rejected",
        "nnship_predictions",
        "nnship_out_of_range_inputs",
        "nnship_model_info",
    ):
        assert name in before, name
    info = next(s for s in before["nnship_model_info"].samples if s.value == 1).labels
    assert info["model"] == "iris-served" and info["provider"] == "CPUExecutionProvider"
    assert len(info["onnx_sha256"]) == 64
    assert post(url, {"inputs": [ROW, ROW]}).status_code == 200
    httpx.post(
        f"{url}/predict",
        content='{"inputs": [[1, 2, NaN, 4]]}',
        headers={"content-type": "application/json"},
    )
    flagged = [{"row": 0, "features": ["sepal length (cm)"]}]
    assert post(url, {"inputs": [[500.0, 3.5, 1.4, 0.2]]}).json()["out_of_range"] == flagged
    after = metrics(url)
    assert counter(after, "nnship_predictions") - counter(before, "nnship_predictions") == 3
    assert (
        counter(after, "nnship_requests_rejected", reason="non_finite")
        - counter(before, "nnship_requests_rejected", reason="non_finite")
        == 1
    )
    assert counter(after, "nnship_out_of_range_inputs", feature="sepal length (cm)") >= 1
    series = sum(len(f.samples) for f in after.values())
    rng = random.Random(0)
    with httpx.Client() as c:
        for _ in range(1000):
            prefix = rng.choice(
                ["", "static_content/", "v2/models/", "v2/models/iris-served/versions/"]
            )
            c.get(f"{url}/{prefix}{''.join(rng.choices(string.ascii_lowercase, k=12))}")
    grown = sum(len(f.samples) for f in metrics(url).values())
    # 1,000 unknown paths: a handful of /__other__ series
    assert grown - series < 30, (series, grown)


@pytest.mark.parametrize(
    "endpoint",
    ["/predict", "/v2/models/iris-served/infer", "/v2/models/iris-served/versions/V/infer"],
)
def test_inference_request_metrics_are_the_series_bentoml_records(server, iris_package, endpoint):
    """/predict and the unversioned v2 infer path are answered outside BentoML's middleware: their
    request counter, duration histogram and in-progress gauge move as BentoML's own middleware moves
    them for the routes it answers (the versioned infer path, and /readyz). (Before the module's
    other servers start: they share the BentoML home, and a starting server empties its metrics
    folder.)"""
    url, _ = server
    path = endpoint.replace("/V/", f"/{iris_package['version']}/")
    label = "/__other__" if "/versions/" in path else path  # version strings are not labels
    if path == "/predict":
        good, bad = {"inputs": [ROW]}, {"inputs": [ROW], "extra": 1}
    else:
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}
        good, bad = {"inputs": [tensor]}, {"inputs": [{**tensor, "shape": [1, 5]}]}

    def series(fams, family, suffix, code):
        return [
            s
            for s in fams[family].samples
            if s.name.endswith(suffix)
            and s.labels.get("endpoint") == label
            and s.labels.get("http_response_code") == code
        ]

    before = metrics(url)
    assert httpx.post(f"{url}{path}", json=good, timeout=30).status_code == 200
    assert httpx.post(f"{url}{path}", json=bad, timeout=30).status_code == 400
    after = metrics(url)
    for code in ("200", "400"):
        total = series(after, "bentoml_service_request", "_total", code)
        assert len(total) == 1
        was = series(before, "bentoml_service_request", "_total", code)
        assert total[0].value - (was[0].value if was else 0) == 1
        count = series(after, "bentoml_service_request_duration_seconds", "_count", code)
        was = series(before, "bentoml_service_request_duration_seconds", "_count", code)
        assert count[0].value - (was[0].value if was else 0) == 1
    # the same label names and values as the series BentoML's middleware records for /readyz
    ready = next(
        s for s in after["bentoml_service_request"].samples if s.labels.get("endpoint") == "/readyz"
    )
    answered = series(after, "bentoml_service_request", "_total", "200")[0]
    assert set(answered.labels) == set(ready.labels)
    assert {k: v for k, v in answered.labels.items() if k not in ("endpoint",)} == {
        k: v for k, v in ready.labels.items() if k not in ("endpoint",)
    }
    in_progress = [
        s
        for s in after["bentoml_service_request_in_progress"].samples
        if s.labels.get("endpoint") == label
    ]
    assert [s.value for s in in_progress] == [0.0]


def test_unbounded_paths_are_the_problem(guarded):
    """With the path bound switched off, every unknown path becomes new series (what the bound prevents)."""
    series = sum(len(f.samples) for f in metrics(guarded).values())
    with httpx.Client() as c:
        for i in range(200):
            c.get(f"{guarded}/scan-{i}")
    grown = sum(len(f.samples) for f in metrics(guarded).values())
    assert grown - series >= 200


def test_api_key_rate_limit_and_strict_range(guarded):
    url = guarded
    assert post(url, {"inputs": [ROW]}).status_code == 401
    assert (
        post(url, {"inputs": [ROW]}, headers={"authorization": "Bearer wrong"}).status_code == 401
    )
    assert (
        httpx.get(f"{url}/readyz").status_code == 200
        and httpx.get(f"{url}/metrics").status_code == 200
    )
    ok = {"authorization": "Bearer s3cret-key"}
    r = post(url, {"inputs": [[500.0, 3.5, 1.4, 0.2]]}, headers=ok)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "training_range"
    assert "sepal length" in r.json()["error"]
    assert "x-bentoml-request-id" in r.headers  # BentoML's layer ties the answer to its span
    answers = [post(url, {"inputs": [ROW]}, headers={"x-api-key": "s3cret-key"}) for _ in range(8)]
    codes = [r.status_code for r in answers]
    assert codes.count(200) >= 2 and 429 in codes
    limited = answers[codes.index(429)]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["detail"][0]["type"] == "rate_limited"


def test_openapi_document_and_bentoml_client(server):
    """/predict is published in BentoML's OpenAPI document, and BentoML's own client calls it."""
    import bentoml

    url, _ = server
    doc = httpx.get(f"{url}/docs.json").json()
    assert "/predict" in doc["paths"]
    with bentoml.SyncHTTPClient(url) as client:
        answer = client.predict(inputs=[ROW, ROW])
    assert answer["model"] == "iris-served" and answer["predictions"] == ["setosa", "setosa"]


def test_loadtest_slo_gate(server):
    """`nnship loadtest` drives the Locust scenario and gates on failures and p99."""
    import subprocess
    import sys

    url, _ = server
    base = [
        sys.executable,
        "-m",
        "nnship.cli",
        "loadtest",
        "--host",
        url,
        "--users",
        "4",
        "--duration",
        "4s",
        "--model",
        "iris-served",
    ]
    ok = subprocess.run(
        [*base, "--slo-p99-ms", "5000"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout and " 0 failures" in ok.stdout
    strict = subprocess.run(
        [*base, "--slo-p99-ms", "0.001"], capture_output=True, text=True, timeout=120
    )
    assert strict.returncode == 1 and "FAIL" in strict.stdout


def test_hostile_bodies_get_4xx_never_5xx(server, iris_package):
    url, _ = server
    infer = f"{url}/v2/models/iris-served/infer"
    deep = "[" * 50000 + "]" * 50000
    for target, raw in (
        (infer, deep),
        (infer, '{"inputs": [' + "9" * 5000 + "]}"),
        (f"{url}/predict", deep),
    ):
        r = httpx.post(target, content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (target, r.status_code, r.text[:200])
    # a lone surrogate in an echoed string: escaped in the answer, not a failed response
    v2 = '{"id": "\\ud800", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}'
    r = httpx.post(infer, content=v2, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["id"] == "\\ud800", r.text
    # near float32's limit: 422 exactly when the served variant's output overflows, else 200
    huge = np.full((1, 4), 3e38, dtype=np.float32)
    pkg = load_package(f"iris-served:{iris_package['version']}")
    out = cpu_session(pkg.variant_path(iris_package["default_variant"])).run(None, {"input": huge})
    r = post(url, {"inputs": huge.tolist()})
    if np.isfinite(out[0]).all():
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "finite_output", r.text


def test_cors_route_refuses_like_the_fast_route_and_adds_cors_headers(
    server, iris_package, tmp_path
):
    """With BentoML's CORS on, BentoML's route answers /predict: bad bodies still get the fast
    route's status and body, and every answer carries the CORS headers BentoML's config asks for."""
    origin = "https://app.example"
    config = tmp_path / "bentoml.yaml"
    config.write_text(  # BentoML 1.4 reads http settings per service
        "services:\n  nnship:\n    http:\n      cors:\n        enabled: true\n"
        f"        access_control_allow_origins: ['{origin}']\n"
        "        access_control_allow_methods: ['POST']\n"
    )
    fast_url, _ = server
    bodies = [
        '{"inputs": [[5.1, 3.5, 1.4, 0.2]], "extra": 1}',
        '{"rows": [[5.1, 3.5, 1.4, 0.2]]}',
        '{"inputs": [[5.1, 3.5, 1.4]]}',
        '{"inputs": "x"}',
        '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}',
    ]
    with running_server({**iris_env(iris_package), "BENTOML_CONFIG": str(config)}) as (url, _):
        for raw in bodies:
            answers = [
                httpx.post(
                    f"{u}/predict",
                    content=raw,
                    headers={
                        "content-type": "application/json",
                        "origin": origin,
                        "x-request-id": "same",
                    },
                    timeout=30,
                )
                for u in (fast_url, url)
            ]
            fast, cors = answers
            assert cors.status_code == fast.status_code, raw
            assert cors.json() == fast.json(), raw
            assert cors.headers.get("access-control-allow-origin") == origin, raw
    assert [a.status_code for a in answers] == [200, 200]  # the last body is valid
