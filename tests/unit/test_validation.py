"""The validator alone, on an image and a sequence manifest."""

import json

import numpy as np
import pytest

from nnship.service.security import TokenBuckets
from nnship.service.settings import Settings
from nnship.service.validation import RequestError, Validator
from tests import manifests


def manifest(family, shape, feats):
    return manifests.manifest(family, shape, task="regression", feats=feats)


SEQ = Validator(manifest("gru", [8, 3], 3), max_rows=4)
IMG = Validator(manifest("cnn", [1, 2, 2], 4), max_rows=4)


def rule(fn, value):
    with pytest.raises(RequestError) as e:
        fn(value)
    return e.value.status, e.value.reason, e.value.rule, e.value.loc


def test_sequences_of_any_allowed_length():
    for t in (1, 8, 32):
        assert SEQ.predict_inputs([[[1.0, 2.0, 3.0]] * t]).shape == (1, t, 3)
    assert rule(SEQ.predict_inputs, [[[1.0, 2.0, 3.0]] * 33]) == (
        400,
        "sequence_length",
        "sequence_length",
        ["inputs", 0],
    )
    assert rule(SEQ.predict_inputs, [[]])[1] == "sequence_length"
    assert rule(SEQ.predict_inputs, [[[1.0, 2.0]]])[:3] == (400, "shape", "shape")


def test_image_rules():
    assert IMG.predict_inputs([[[[1, 2], [3, 4]]]]).dtype == np.float32
    assert rule(IMG.predict_inputs, [[1]])[2] == "rank"
    assert rule(IMG.predict_inputs, [[[1, 2], [3, 4]]])[2] == "shape"
    assert rule(IMG.predict_inputs, [[[[1, 2], [3, 4]]]] * 5)[1] == "too_many_rows"
    assert rule(IMG.predict_inputs, [[[[1, 2], [3, 1e300]]]])[:3] == (
        400,
        "overflow",
        "float32_range",
    )


def test_predict_body_envelope():
    row = b"[[[1, 2], [3, 4]]]"
    assert IMG.predict_body(b'{"inputs": [' + row + b"]}").shape == (1, 1, 2, 2)
    assert rule(IMG.predict_body, b'{"inputs": [' + row) == (400, "malformed", "json", [])
    assert rule(IMG.predict_body, b"[" + row + b"]")[2] == "object_required"
    assert rule(IMG.predict_body, b'{"input": [' + row + b"]}")[2:] == ("missing", ["inputs"])
    extra = b'{"inputs": [' + row + b'], "threshold": 0.5}'
    assert rule(IMG.predict_body, extra)[2:] == ("unknown_field", ["threshold"])
    assert rule(IMG.predict_body, b"[" * 30_000 + b"]" * 30_000)[2] == "json"
    assert rule(IMG.predict_body, b'{"inputs": [' + b"9" * 5000 + b"]}")[2] == "json"
    assert rule(IMG.predict_body, b'{"inputs": \xff}')[2] == "json"  # not UTF-8
    body = b'{"inputs": [' + row + b"]}"
    assert rule(IMG.predict_body, b"\xef\xbb\xbf" + body)[2] == "json"  # a byte-order mark
    assert rule(IMG.predict_body, body.decode().encode("utf-16"))[2] == "json"
    # a lone surrogate is a legal JSON escape but not UTF-8: echoed escaped, never a crash
    with pytest.raises(RequestError) as e:
        IMG.predict_body(body[:-1] + rb', "\udfff": 0}')
    assert e.value.loc == ["\\udfff"] and e.value.rule == "unknown_field"
    json.dumps(e.value.body(), ensure_ascii=False).encode("utf-8")  # what the response does
    # an integer JSON allows but no float holds
    huge = b'{"inputs": [[[[1, 2], [3, ' + b"9" * 400 + b"]]]]}"
    assert rule(IMG.predict_body, huge) == (
        400,
        "overflow",
        "float32_range",
        ["inputs", 0, 0, 1, 1],
    )
    # the array rules are predict_inputs' own, with the field path from the top of the body
    assert rule(IMG.predict_body, b'{"inputs": [[[[1, 2], [3, NaN]]]]}') == (
        400,
        "non_finite",
        "finite_required",
        ["inputs", 0, 0, 1, 1],
    )


def test_v2_shape_checks():
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 40, 3], "data": [0.0] * 120}]
    }
    assert rule(SEQ.v2_inputs, body)[1] == "sequence_length"
    body["inputs"][0].update(shape=[2, 5, 3], data=[[0.0] * 15, [1.0] * 15])
    x, outputs = SEQ.v2_inputs(body)
    assert x.shape == (2, 5, 3) and x[1].min() == 1.0
    assert outputs == [(name, False) for name in SEQ.outputs]  # every output, as JSON


def test_values_are_never_changed():
    values = [[[0.1, 16777217.0, -3.25]] * 2]
    x = SEQ.predict_inputs(values)
    np.testing.assert_array_equal(x, np.asarray(values, dtype=np.float32))


def test_out_of_range_flags_and_strict_mode():
    rows, counts = SEQ.out_of_range(np.array([[[1, 2, 3]], [[1, 50, 3]]], np.float32))
    assert rows == [1] and counts.tolist() == [0, 1, 0]
    strict = Validator(manifest("gru", [8, 3], 3), max_rows=4, strict_range=True)
    with pytest.raises(RequestError) as e:
        strict.out_of_range(np.array([[[1, -50, 3]]], np.float32))
    assert e.value.status == 422 and "f1" in e.value.message


def test_token_bucket():
    b = TokenBuckets(rate=2, burst=2)
    assert b.take("a", now=0) == 0 and b.take("a", now=0) == 0
    assert b.take("a", now=0) == pytest.approx(0.5)
    assert b.take("b", now=0) == 0  # other clients unaffected
    assert b.take("a", now=1.0) == 0


def test_settings_from_env():
    s = Settings.from_env(
        {"NNSHIP_WORKERS": "2", "NNSHIP_STRICT_RANGE": "true", "NNSHIP_RATE_LIMIT": "1.5"}
    )
    assert s.workers == 2 and s.strict_range and s.rate_limit == 1.5
    from nnship.errors import NnshipError

    with pytest.raises(NnshipError, match="NNSHIP_WORKERS='two' is not a valid int"):
        Settings.from_env({"NNSHIP_WORKERS": "two"})
    with pytest.raises(NnshipError, match="NNSHIP_STRICT_RANGE='maybe'"):
        Settings.from_env({"NNSHIP_STRICT_RANGE": "maybe"})
    assert Settings.from_env({"NNSHIP_PREDICT_ROUTE": "bentoml"}).predict_route == "bentoml"
    with pytest.raises(
        NnshipError, match="NNSHIP_PREDICT_ROUTE='fast': must be one of asgi, bentoml"
    ):
        Settings.from_env({"NNSHIP_PREDICT_ROUTE": "fast"})


def test_made_up_keys_do_not_escape_the_rate_limit():
    import asyncio

    from nnship.service.security import Guard

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = Guard(app, Settings(rate_limit=1, rate_burst=2))
    guard.buckets.now = lambda: 0.0  # frozen: no token comes back between the requests

    async def call(i):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(m):
            sent.append(m)

        headers = [(b"content-type", b"application/json"), (b"x-api-key", f"fake-{i}".encode())]
        await guard(
            {
                "type": "http",
                "method": "POST",
                "path": "/predict",
                "headers": headers,
                "client": ("10.0.0.1", 1),
            },
            receive,
            send,
        )
        return sent[0]["status"]

    async def main():
        return [await call(i) for i in range(5)]

    codes = asyncio.run(main())
    assert codes.count(200) == 2 and codes.count(429) == 3


def test_ragged_sequences_rejected():
    assert rule(SEQ.predict_inputs, [[[0, 0, 0]] * 5, [[0, 0, 0]] * 6])[:3] == (
        400,
        "sequence_length",
        "equal_lengths",
    )


def test_v2_parameters_must_be_an_object():
    body = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 1, 3],
                "data": [0, 0, 0],
                "parameters": [1],
            }
        ]
    }
    assert rule(SEQ.v2_inputs, body)[:3] == (400, "malformed", "object_required")


def test_flags_override_environment_only_when_given(monkeypatch):
    import argparse

    from nnship.service.cli import add_arguments, settings_from_args

    monkeypatch.setenv("NNSHIP_PROTECT_ALL", "true")
    monkeypatch.setenv("NNSHIP_RATE_LIMIT", "5")
    p = argparse.ArgumentParser()
    add_arguments(p)
    s = settings_from_args(p.parse_args(["m"]))
    assert s.protect_all and s.rate_limit == 5 and s.model == "m"
    assert settings_from_args(p.parse_args(["m", "--rate-limit", "2"])).rate_limit == 2
    from nnship.errors import NnshipError

    with pytest.raises(NnshipError, match="NNSHIP_MAX_BATCH_SIZE=0 is out of range"):
        settings_from_args(p.parse_args(["m", "--max-batch-size", "0"]))


def test_one_checked_request_id_reaches_the_app():
    import asyncio

    from nnship.service.security import Guard

    seen = []

    async def app(scope, receive, send):
        seen.append([v for k, v in scope["headers"] if k == b"x-request-id"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(m):
            pass

        headers = [(b"x-request-id", b"bad id!"), (b"x-request-id", b"good-id")]
        await Guard(app, Settings())(
            {"type": "http", "method": "GET", "path": "/livez", "headers": headers}, receive, send
        )

    asyncio.run(main())
    assert len(seen[0]) == 1 and seen[0][0] == b"good-id"
