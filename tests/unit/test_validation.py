"""The validator alone, on an image and a sequence manifest."""

import json

import numpy as np
import pytest

from nnship.contracts import Manifest
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
    assert rows == [{"row": 1, "features": ["f1"]}] and counts.tolist() == [0, 1, 0]
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


NAMES = ["alcohol", "malic acid", 'it\'s "q"']


def tabular(names=NAMES, max_rows=4):
    """A tabular model whose features have the given names (stats span [0, 10])."""
    data = manifests.manifest("mlp", (len(names),)).model_dump(mode="json")
    data["input"]["feature_names"] = names
    return Validator(Manifest.model_validate(data), max_rows=max_rows)


TAB = tabular()
ROW = {"alcohol": 1, "malic acid": 2, 'it\'s "q"': 3}


def refusal(fn, value):
    """(rule, loc, message) of a refused value."""
    with pytest.raises(RequestError) as e:
        fn(value)
    assert e.value.status == 400
    return e.value.rule, e.value.loc, e.value.message


def test_records_give_the_positional_rows_in_feature_order():
    records = [
        {'it\'s "q"': 3, "alcohol": 1, "malic acid": 2.5},
        {"alcohol": 4, "malic acid": 5, 'it\'s "q"': 6},
    ]
    x = TAB.predict_inputs(records)
    np.testing.assert_array_equal(x, TAB.predict_inputs([[1, 2.5, 3], [4, 5, 6]]))
    body = json.dumps({"inputs": records}).encode()
    x2, positional = TAB.predict_request(body)
    np.testing.assert_array_equal(x2, x)
    assert not positional and TAB.predict_request(b'{"inputs": [[1, 2, 3]]}')[1]


def test_record_names_refused_by_name():
    rule, loc, msg = refusal(TAB.predict_inputs, [{"alcohol": 1, "malic acid": 2}])
    assert (rule, loc) == ("missing_features", ["inputs", 0])
    assert "missing feature(s) 'it\\'s \"q\"'" in msg
    extra = {**ROW, "proline": 4}
    rule, loc, msg = refusal(TAB.predict_inputs, [ROW, extra])
    assert (rule, loc) == ("unknown_features", ["inputs", 1]) and "'proline'" in msg
    # many unknown names: a few shown, the rest counted; a long or unencodable one cut and escaped
    many = {f"x{i}": 0 for i in range(40)} | {"\ud800" + "y" * 500: 0}
    rule, _, msg = refusal(TAB.predict_inputs, [many])
    assert rule == "unknown_features" and "'x4' and 36 more" in msg and len(msg) < 400
    msg.encode("utf-8")  # a lone surrogate is escaped
    assert "x10" not in msg and "missing feature(s) 'alcohol'" in msg


def test_record_values_under_the_positional_rules_with_the_feature_in_loc():
    def bad(value, feature="malic acid"):
        row = ROW | {feature: value}
        return refusal(TAB.predict_inputs, [ROW, row])[:2]

    assert bad("2") == ("number_required", ["inputs", 1, "malic acid"])
    assert bad(True) == ("number_required", ["inputs", 1, "malic acid"])
    assert bad(None, "alcohol") == ("number_required", ["inputs", 1, "alcohol"])
    assert bad(float("nan")) == ("finite_required", ["inputs", 1, "malic acid"])
    assert bad(1e300, 'it\'s "q"') == ("float32_range", ["inputs", 1, 'it\'s "q"'])
    assert bad(10**400) == ("float32_range", ["inputs", 1, "malic acid"])
    rows = [ROW] * 5
    assert refusal(TAB.predict_inputs, rows)[:2] == ("max_rows", ["inputs"])


def test_rows_of_one_form_per_request():
    record = ROW
    rule, loc, msg = refusal(TAB.predict_inputs, [record, [1, 2, 3]])
    assert (rule, loc) == ("one_row_form", ["inputs", 1]) and "positional lists or records" in msg
    assert refusal(TAB.predict_inputs, [[1, 2, 3], record])[:2] == ("one_row_form", ["inputs", 1])
    assert refusal(TAB.predict_inputs, [record, 7])[:2] == ("one_row_form", ["inputs", 1])


def test_image_and_sequence_models_take_positional_arrays_only():
    for v in (IMG, SEQ):
        rule, loc, msg = refusal(v.predict_inputs, [{"f0": 1}])
        assert (rule, loc) == ("positional_required", ["inputs", 0])
        assert "positional arrays" in msg
        assert refusal(v.predict_csv, b"f0\n1\n")[0] == "positional_required"
    assert refusal(IMG.predict_inputs, [[[[1, 2], [3, 4]]], {"f0": 1}])[:2] == (
        "positional_required",
        ["inputs", 1],
    )


CSV_HEAD = b'malic acid,"it\'s ""q""",alcohol\r\n'


def test_csv_rows_in_any_column_order():
    x = TAB.predict_csv(b"\xef\xbb\xbf" + CSV_HEAD + b"2.5,3,1\r\n\r\n 5 ,6e0,-4\n")
    np.testing.assert_array_equal(x, TAB.predict_inputs([[1, 2.5, 3], [-4, 5, 6]]))
    assert TAB.predict_request(CSV_HEAD + b"2.5,3,1\n", csv_body=True)[1] is False


def test_csv_refusals_name_the_row_and_the_column():
    def csv(body):
        return refusal(TAB.predict_csv, body)

    assert csv(b"")[0] == "csv_header" and csv(b"\n\n")[0] == "csv_header"
    assert csv(CSV_HEAD)[0] == "non_empty_batch"
    rule, loc, msg = csv(CSV_HEAD + b"1,2,3\n1,abc,3\n")
    assert (rule, loc) == ("number_required", ["row", 2, 'it\'s "q"']) and "'abc'" in msg
    assert "row 2" in msg
    assert csv(CSV_HEAD + b"1,2,\n")[:2] == ("number_required", ["row", 1, "alcohol"])
    assert csv(CSV_HEAD + b"1_0,2,3\n")[:2] == ("number_required", ["row", 1, "malic acid"])
    assert csv(CSV_HEAD + b"1,NaN,3\n")[:2] == ("finite_required", ["row", 1, 'it\'s "q"'])
    assert csv(CSV_HEAD + b"1,-inf,3\n")[0] == "finite_required"
    assert csv(CSV_HEAD + b"1,2,1e39\n")[:2] == ("float32_range", ["row", 1, "alcohol"])
    assert csv(CSV_HEAD + b"1,2,1e999\n")[:2] == ("float32_range", ["row", 1, "alcohol"])
    assert csv(CSV_HEAD + b"1,2\n")[:2] == ("csv_columns", ["row", 1])
    assert csv(CSV_HEAD + b"1,2,3\n" * 5)[:2] == ("max_rows", ["row", 5])
    assert csv(CSV_HEAD + b'1,2,"3\n')[0] == "csv"
    assert csv(b"\xff,a\n1,2\n")[0] == "csv"
    rule, loc, msg = csv(b"alcohol,malic acid,proline,x\n1,2,3,4\n")
    assert (rule, loc) == ("unknown_features", ["header"])
    assert "'proline', 'x'" in msg and "missing feature(s) 'it\\'s" in msg
    assert csv(b"alcohol,malic acid\n1,2\n")[0] == "missing_features"
    assert csv(b"alcohol,alcohol,malic acid\n1,2,3\n")[:2] == ("duplicate_column", ["header"])


def test_csv_work_is_linear_in_the_body():
    """A body at the model's size limit (many rows, or one huge line) is refused after one pass,
    by the row limit or the field's size, never parsed value by value past it."""
    v = tabular(max_rows=1000)
    body = CSV_HEAD + b"1,2,3\n" * 1001
    assert len(body) < v.max_body and refusal(v.predict_csv, body)[:2] == (
        "max_rows",
        ["row", 1001],
    )
    line = CSV_HEAD + b"1,2," + b"9" * (v.max_body - len(CSV_HEAD) - 10) + b"\n"
    assert refusal(v.predict_csv, line)[0] in ("csv", "float32_range")
    with pytest.raises(RequestError) as e:
        v.predict_csv(b"x" * (v.max_body + 1))
    assert e.value.rule == "model_body_limit"


def test_out_of_range_names_the_features():
    x = np.array([[1, 2, 3], [50, 2, -50], [1, 2, 3]], np.float32)
    flagged, counts = TAB.out_of_range(x)
    assert flagged == [{"row": 1, "features": ["alcohol", 'it\'s "q"']}]
    assert counts.tolist() == [1, 0, 1]
    assert TAB.out_of_range(x[[0, 2]])[0] == []
    # images: each pixel is a feature of its own; sequences: a channel at any step
    img = np.zeros((2, 1, 2, 2), np.float32)
    img[1, 0, 1, 0] = 99
    assert IMG.out_of_range(img)[0] == [{"row": 1, "features": ["f2"]}]
    seq = np.ones((1, 4, 3), np.float32)
    seq[0, 1, 2] = seq[0, 3, 2] = seq[0, 2, 0] = -9
    assert SEQ.out_of_range(seq)[0] == [{"row": 0, "features": ["f0", "f2"]}]


def _outcome(fn, raw):
    """An accepted body's values, or a refusal's status, reason, rule and loc."""
    try:
        return fn(raw).tolist()
    except RequestError as e:
        return (e.status, e.reason, e.rule, e.loc, e.message)


def test_the_fast_json_reader_answers_every_body_as_json_does():
    """orjson reads the bodies it can; every other body (NaN, huge numbers, lone surrogates, bad
    bytes) gets exactly the answer or refusal the standard json reader gives it."""

    def by_json(raw):
        return IMG.predict_inputs(IMG.parse(raw)["inputs"])  # the envelope is well formed below

    values = [
        "1",
        "-0.0",
        "1e5",
        "1E+5",
        "0.1",
        "1e-400",
        "4.9e-324",
        "3.4028235e38",
        "1e39",
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "1" * 40,
        "0.12345678901234567890123",
        "true",
        '"1"',
        '"\\ud800"',
        "null",
    ]
    for v in values:
        raw = b'{"inputs": [[[[1, 2], [3, ' + v.encode() + b"]]]]}"
        assert _outcome(IMG.predict_body, raw) == _outcome(by_json, raw), v
    # whole arrays: numpy's quick read of plain numbers must accept and refuse what pydantic does
    row = "[[1, 2], [3, 4]]"
    for inputs in [
        f"[{row}]",
        f"[{row}, {row}, {row}, {row}]",
        f"[{row}, {row}, {row}, {row}, {row}]",  # too many rows
        "[]",
        f"{row}",  # rank
        "[[[1, 2, 3], [3, 4, 5]]]",
        "[[[1, 2], [3, 4]], [[1, 2], [3, 4]]]",
        "[[[[1, 2], [3]]]]",  # ragged
        "[[[[1, 2], [3, 4, 5]]]]",
        '[[[[1, 2], [3, "4"]]]]',
        "[[[[1, 2], [3, null]]]]",
        '[[[[1, 2], [3, {"a": 1}]]]]',
        "[[[[1.5, 2], [-3, 4e2]]]]",
        "[[[[1, 2], [3, 18446744073709551615]]]]",
        "[[[[1, 2], [3, -9223372036854775808]]]]",
        "[[[[1, 2], [3, 1e39]]]]",
        "[[[[1, 2], [3, true]]]]",
        "[[[[1, 2], [3, 4]]], [[[1, 2], [3, 4]]]]",
        "[[1, 2, 3, 4]]",
        "5",
        "null",
    ]:
        raw = b'{"inputs": ' + inputs.encode() + b"}"
        assert _outcome(IMG.predict_body, raw) == _outcome(by_json, raw), inputs
    for raw in (b"\xef\xbb\xbf{}", b'{"inputs": "\xff"}', b"[" * 5000, b'{"inputs": [1]} x'):
        assert rule(IMG.predict_body, raw)[:3] == (400, "malformed", "json")
