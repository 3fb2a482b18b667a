"""v2 requests over real HTTP: requested outputs are bounded, and sizes are checked before values."""

import json
import time

import httpx
import pytest

from tests.server import running_server

INFER = "/v2/models/iris-served/infer"
ROW = [5.1, 3.5, 1.4, 0.2]
LIMIT = 4 << 20  # the default NNSHIP_MAX_BODY_BYTES


@pytest.fixture(scope="module")
def server(iris_package):
    env = {"NNSHIP_MODEL": f"iris-served:{iris_package['version']}", "NNSHIP_THREADS": "1"}
    with running_server(env) as (url, _):
        yield url


def infer(url: str, body: dict | bytes) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    return httpx.post(url + INFER, content=raw, headers=headers, timeout=60)


def request(rows: int = 1, outputs: list[str] | None = None) -> dict:
    body: dict = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": ROW * rows}]
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def test_duplicate_outputs_refused_fast_and_small(server):
    body = request(outputs=["probabilities"] * 2000)  # the request: 59 KB, a 26 MB answer
    assert 50_000 < len(json.dumps(body)) < 70_000
    t = time.perf_counter()
    r = infer(server, body)
    took = time.perf_counter() - t
    assert r.status_code == 400, r.text[:300]
    d = r.json()["detail"][0]
    assert d["type"] == "duplicate_output" and "'probabilities'" in d["msg"]
    assert d["loc"] == ["outputs", 1, "name"]
    assert len(r.content) < 1000 and took < 0.5, (len(r.content), took)


def test_unknown_output_still_refused(server):
    r = infer(server, request(outputs=["logits"]))
    assert r.status_code == 400 and r.json()["detail"][0]["type"] == "output_name"


def test_largest_answer_is_every_output_once_per_row(server):
    r = infer(server, request(rows=1024, outputs=["probabilities", "output"]))
    assert r.status_code == 200, r.text[:300]
    outputs = r.json()["outputs"]
    assert [o["name"] for o in outputs] == ["probabilities", "output"]
    assert all(o["shape"] == [1024, 3] and len(o["data"]) == 3072 for o in outputs)
    assert len(r.content) < 200_000


def _bodies() -> dict[str, bytes]:
    head = b'{"inputs": [{"name": "input", "datatype": "%s", "shape": %s, "data": ['

    def filled(datatype: bytes, shape: bytes) -> bytes:
        prefix = head % (datatype, shape)
        n = (LIMIT - len(prefix) - 10) // 4
        return prefix + b"1.5," * n + b"1.5]}]}"

    depth = (LIMIT - 2) // 2
    return {
        "wrong element count": filled(b"FP32", b"[1, 4]"),
        "wrong datatype": filled(b"FP64", b"[1, 4]"),
        "too many rows": filled(b"FP32", b"[1000000, 4]"),
        "deep nesting": b"[" * depth + b"]" * depth,
    }


@pytest.mark.parametrize("kind", list(_bodies()))
def test_max_size_bad_bodies_refused_before_parsing(server, kind):
    body = _bodies()[kind]
    assert len(body) <= LIMIT
    took = []
    for _ in range(3):
        t = time.perf_counter()
        r = infer(server, body)
        took.append(time.perf_counter() - t)
        assert r.status_code == 413, r.text[:300]
        assert r.json()["detail"][0]["type"] == "model_body_limit"
    # sending 4 MiB through httpx takes ~0.13 s here; parsing it took ~0.2 s more, validating ~0.15
    assert min(took) < 0.3, took


def test_bad_bodies_at_the_model_limit_refused_by_size_first(server):
    """Bodies just under the model's limit are parsed, then refused by their sizes (values unread)."""
    values = ",".join(['"x"'] * 60_000)  # 240 KB of strings where numbers belong
    raw = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [%s]}]}'
    r = infer(server, raw % values.encode())
    assert r.status_code == 400
    d = r.json()["detail"][0]
    assert d["type"] == "size_matches_shape" and d["loc"] == ["inputs", 0, "data"]
    nested = request(rows=2)
    nested["inputs"][0]["data"] = [[[v] for v in ROW]] * 2  # deeper than [2, 4]
    assert infer(server, nested).json()["detail"][0]["type"] == "size_matches_shape"
