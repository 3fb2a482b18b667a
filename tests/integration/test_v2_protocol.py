"""The Open Inference Protocol v2 as a stock tritonclient.http client speaks it, over real HTTP:
server metadata, model configuration, repository index, and inference with binary tensor data (the
client's defaults) and with JSON, compared with /predict's answers."""

import json

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nnship.numeric import softmax
from nnship.training.data import load_dataset, split
from tests.server import iris_env, running_server

MODEL = "iris-served"


@pytest.fixture(scope="module")
def server(iris_package):
    env = iris_env(iris_package, max_rows="64", max_batch_size="32", max_wait_ms="2.5")
    with running_server(env) as (url, _):
        yield url, iris_package


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.http as triton

    return triton.InferenceServerClient(server[0].removeprefix("http://"))


@pytest.fixture(scope="module")
def rows():
    return split(load_dataset("iris")).x_test[:7].astype(np.float32)


def predict(url: str, x: np.ndarray) -> dict:
    r = httpx.post(f"{url}/predict", json={"inputs": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_server_metadata_answers_at_v2_without_redirect(server, client):
    url, _ = server
    meta = client.get_server_metadata()
    assert meta["name"] == "nnship" and meta["version"]
    assert set(meta["extensions"]) == {
        "binary_tensor_data",
        "model_configuration",
        "model_repository",
    }
    for path in ("/v2", "/v2/"):
        r = httpx.get(url + path, follow_redirects=False)
        assert r.status_code == 200 and r.json() == meta, (path, r.status_code)
    r = httpx.get(url + "/v2/health/live/", follow_redirects=False)
    assert r.status_code == 404 and "trailing slash" in r.json()["error"]


def test_model_config_in_triton_form(server, client):
    url, package = server
    config = client.get_model_config(MODEL)
    assert config == client.get_model_config(MODEL, package["version"])
    assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64  # rows per request
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4]}
    ]
    assert config["output"] == [
        {"name": "output", "data_type": "TYPE_FP32", "dims": [3]},
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]},
    ]
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [32]
    assert batching["max_queue_delay_microseconds"] == 2500
    assert config["parameters"]["version"]["string_value"] == package["version"]
    assert httpx.get(f"{url}/v2/models/other/config").status_code == 404


def test_repository_index_and_no_model_control(server, client):
    url, package = server
    entry = {"name": MODEL, "version": package["version"], "state": "READY", "reason": ""}
    assert client.get_model_repository_index() == [entry]
    for body in ({}, {"ready": True}, {"ready": False}):
        r = httpx.post(f"{url}/v2/repository/index", json=body)
        assert r.status_code == 200 and r.json() == [entry], body
    for body, rule in (
        ({"ready": "yes"}, "bool_required"),
        ({"other": 1}, "index_options"),
        ([1], "index_options"),
        ("[" * 1000, "json"),  # nested deeper than the parser allows
        ({"ready": True, "pad": "x" * 2000}, "index_options"),
    ):
        raw = body if isinstance(body, str) else json.dumps(body)
        r = httpx.post(
            f"{url}/v2/repository/index", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["detail"][0]["type"] == rule, (body, r.text)
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="serves one model"):
        client.load_model(MODEL)
    r = httpx.post(f"{url}/v2/repository/models/{MODEL}/unload", json={})
    assert r.status_code == 400 and r.json()["detail"][0]["type"] == "model_control"


def test_readiness_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL)["inputs"][0]["shape"] == [-1, 4]


def test_infer_with_client_defaults_binary_both_ways(server, client, rows):
    import tritonclient.http as triton

    url, _ = server
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)  # binary_data=True by default
    result = client.infer(MODEL, [inp])  # no outputs: every output, as binary
    response = result.get_response()
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    ref = predict(url, rows)
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (len(rows), 3)
    np.testing.assert_array_equal(probs, np.asarray(ref["probabilities"], dtype=np.float32))
    assert result.as_numpy("output").shape == (len(rows), 3)
    wanted = [triton.InferRequestedOutput("probabilities")]  # binary_data=True by default
    again = client.infer(MODEL, [inp], outputs=wanted)
    np.testing.assert_array_equal(again.as_numpy("probabilities"), probs)
    assert again.as_numpy("output") is None


def test_infer_json_both_ways_equals_binary(server, client, rows):
    import tritonclient.http as triton

    url, _ = server
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=False)
    outs = [
        triton.InferRequestedOutput("probabilities", binary_data=False),
        triton.InferRequestedOutput("output", binary_data=True),
    ]
    result = client.infer(MODEL, [inp], outputs=outs)
    assert "data" in result.get_output("probabilities")
    ref = np.asarray(predict(url, rows)["probabilities"], dtype=np.float32)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), ref)
    binary = triton.InferInput("input", list(rows.shape), "FP32")
    binary.set_data_from_numpy(rows)
    logits = client.infer(MODEL, [binary]).as_numpy("output")
    np.testing.assert_array_equal(result.as_numpy("output"), logits)


def test_binary_answer_framing_over_raw_http(server, rows):
    url, _ = server
    data = rows.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(rows.shape),
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = httpx.post(
        f"{url}/v2/models/{MODEL}/infer",
        content=header + data,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    (out,) = head["outputs"]
    assert out["parameters"] == {"binary_data_size": len(rows) * 3 * 4}
    assert len(r.content) == n + len(rows) * 3 * 4
    got = np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"])
    ref = np.asarray(predict(url, rows)["probabilities"], dtype=np.float32)
    np.testing.assert_array_equal(got, ref)
    bad = httpx.post(
        f"{url}/v2/models/{MODEL}/infer",
        content=header + data[:-4],
        headers={"inference-header-content-length": str(len(header))},
    )
    assert bad.status_code == 400
    assert bad.json()["detail"][0]["type"] == "binary_size_matches_body"


def test_json_floats_are_shortest_float32_decimals(server, client, rows):
    """/predict's JSON probabilities read back to the exact float32 softmax of the model's logits (from
    the binary answer), each with no more digits than the shortest decimal of that float32 has."""
    import tritonclient.http as triton

    url, _ = server
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    logits = client.infer(MODEL, [inp]).as_numpy("output")
    exact = softmax(logits).astype(np.float32).reshape(-1)
    raw = httpx.post(f"{url}/predict", json={"inputs": rows.tolist()}).text
    tokens = raw.split('"probabilities":')[1].split("]]")[0].replace("[", "").replace("]", "")
    values = tokens.split(",")
    assert len(values) == exact.size
    for t, v in zip(values, exact, strict=True):
        assert np.float32(float(t)) == v, (t, v)
        shortest = np.format_float_scientific(v, unique=True, trim="-").split("e")[0]
        mantissa = t.lower().split("e")[0].replace(".", "").lstrip("0").rstrip("0")
        assert len(mantissa) <= len(shortest.replace(".", "").lstrip("0").rstrip("0")), (t, v)


def counters(url: str, family: str, label: str) -> dict[str, float]:
    """One counter family's values in /metrics, by one label's value."""
    text = httpx.get(f"{url}/metrics").text
    (fam,) = (f for f in text_string_to_metric_families(text) if f.name == family)
    return {s.labels[label]: s.value for s in fam.samples if s.name.endswith("_total")}


def test_infer_counts_predictions_and_out_of_range_values(server, client, rows):
    """Each answered row moves the counter of its predicted label once, and each value outside the
    training range the counter of its feature once, whether the data came as binary or as JSON."""
    import tritonclient.http as triton

    url, _ = server
    x = np.concatenate([rows, rows[:3]])
    x[1, 0] = 500.0  # sepal length far outside the training range
    x[4, 0] = x[4, 2] = -100.0
    labels = client.get_model_metadata(MODEL)["parameters"]["labels"]
    predicted_before = counters(url, "nnship_predictions", "label")
    outside_before = counters(url, "nnship_out_of_range_inputs", "feature")
    inp = triton.InferInput("input", list(x.shape), "FP32")
    for binary in (True, False):
        inp.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(MODEL, [inp])
    picked = np.bincount(result.as_numpy("probabilities").argmax(axis=1), minlength=len(labels))
    predicted = counters(url, "nnship_predictions", "label")
    assert {k: predicted[k] - predicted_before.get(k, 0) for k in labels} == {
        k: 2 * int(n) for k, n in zip(labels, picked, strict=True)
    }
    outside = counters(url, "nnship_out_of_range_inputs", "feature")
    moved = {k: v - outside_before.get(k, 0) for k, v in outside.items()}
    assert moved["sepal length (cm)"] == 4 and moved["petal length (cm)"] == 2
    assert moved["sepal width (cm)"] == moved["petal width (cm)"] == 0
    flagged = json.loads(result.get_response()["parameters"]["out_of_range"])
    assert flagged == [
        {"row": 1, "features": ["sepal length (cm)"]},
        {"row": 4, "features": ["sepal length (cm)", "petal length (cm)"]},
    ]
