"""v2 requests: requested outputs, binary tensor data, and size checks that come before any value is
looked at."""

import json
import math

import numpy as np
import pytest

from nnship.service.validation import RequestError, Validator
from tests import manifests


def manifest(task="classification"):
    return manifests.manifest("mlp", [4], task)


V = Validator(manifest(), max_rows=64)


def body(data, shape=(1, 4), outputs=None, **tensor):
    b = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(shape), "data": data}]}
    b["inputs"][0].update(tensor)
    if outputs is not None:
        b["outputs"] = [{"name": n} for n in outputs]
    return b


class Counted(list):
    """A list that counts the items anyone iterates over: how much of the data the check read."""

    seen = 0

    def __iter__(self):
        for item in super().__iter__():
            self.seen += 1
            yield item


def refused(value):
    with pytest.raises(RequestError) as e:
        V.v2_inputs(value)
    return e.value


def test_outputs_each_known_once():
    assert V.v2_inputs(body([1, 2, 3, 4], outputs=["probabilities", "output"]))[1] == [
        ("probabilities", False),
        ("output", False),
    ]
    e = refused(body([1, 2, 3, 4], outputs=["output", "output"]))
    assert (e.status, e.rule, e.loc) == (400, "duplicate_output", ["outputs", 1, "name"])
    assert "'output'" in e.message
    assert refused(body([1, 2, 3, 4], outputs=["logits"])).rule == "output_name"
    e = refused(body([1, 2, 3, 4], outputs=["output"] * 2000))
    assert (e.status, e.rule, e.loc) == (400, "duplicate_output", ["outputs", 1, "name"])
    regression = Validator(manifest("regression"), max_rows=64)
    with pytest.raises(RequestError, match="available"):
        regression.v2_inputs(body([1, 2, 3, 4], outputs=["probabilities"]))


def test_data_nested_as_the_shape_or_flat():
    flat = V.v2_inputs(body(list(range(8)), shape=(2, 4)))[0]
    nested = V.v2_inputs(body([[0, 1, 2, 3], [4, 5, 6, 7]], shape=(2, 4)))[0]
    assert flat.tolist() == nested.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    e = refused(body([[[[0, 1, 2, 3]]]]))  # nested deeper than [1, 4]
    assert (e.reason, e.rule) == ("shape", "size_matches_shape")


@pytest.mark.parametrize(
    ("data", "shape", "rule"),
    [
        (["x"] * 1_000_000, (1, 4), "size_matches_shape"),  # values never looked at
        ([[1.0, 2.0, 3.0, 4.0]] * 250_000, (2, 4), "size_matches_shape"),
        ([[]] * 1_000_000, (1, 4), "size_matches_shape"),  # lists without values
        ([1.0] * 1_000_000, (1_000_000, 4), "max_rows"),
        ([1.0] * 1_000_000, (1, 4, 1), "rank"),
    ],
    ids=["strings", "rows", "empty-lists", "too-many-rows", "rank"],
)
def test_sizes_are_checked_before_values(data, shape, rule):
    data = Counted(data)
    e = refused(body(data, shape=shape))
    assert e.rule == rule and e.status == 400
    # the walk stops one item past what the shape holds (or never starts): bounded by the shape
    assert data.seen <= math.prod(shape) + 1, f"read {data.seen} of {len(data)} items"


def test_bad_datatype_refused_before_data():
    data = Counted(["x"] * 1_000_000)
    e = refused(body(data, datatype="FP64"))
    assert e.rule == "datatype" and data.seen == 0
    long_name = refused(body([1, 2, 3, 4], name="n" * 100_000))
    assert long_name.rule == "input_name" and len(long_name.message) < 200


def test_bodies_larger_than_any_valid_request_are_not_parsed():
    largest = body([[1.0e38] * 4] * 64, shape=(64, 4))
    raw = json.dumps(largest, indent=8).encode()  # pretty-printed, the widest numbers
    assert len(raw) <= V.max_body and V.v2_inputs(V.parse(raw))[0].shape == (64, 4)
    assert V.predict_body(
        json.dumps({"inputs": [[-1.2345678901234567e-30] * 4] * 64}).encode()
    ).size
    too_big = b"[" * V.max_body + b"]" * V.max_body
    with pytest.raises(RequestError) as e:
        V.parse(too_big)  # parsing it would fail otherwise: nested deeper than JSON parsers allow
    assert (e.value.status, e.value.reason, e.value.rule) == (
        413,
        "body_too_large",
        "model_body_limit",
    )
    with pytest.raises(RequestError, match="larger than any valid request"):
        V.predict_body(too_big)


def binary_request(x, outputs=None, **parameters):
    """What tritonclient sends with its defaults: a JSON header, then the tensor's FP32 bytes."""
    data = np.asarray(x, dtype="<f4").tobytes()
    tensor = {"name": "input", "datatype": "FP32", "shape": list(np.shape(x))}
    tensor["parameters"] = {"binary_data_size": len(data), **parameters}
    b = {"inputs": [tensor]}
    if outputs is not None:
        b["outputs"] = outputs
    else:
        b["parameters"] = {"binary_data_output": True}
    header = json.dumps(b).encode()
    return header + data, str(len(header))


def binary_refused(raw, length):
    with pytest.raises(RequestError) as e:
        V.v2_inputs(*V.v2_body(raw, length))
    return e.value


def test_binary_tensor_equals_json_tensor():
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    got, outputs = V.v2_inputs(*V.v2_body(*binary_request(x)))
    assert got.dtype == np.float32 and np.array_equal(got, x) and got.flags.writeable
    assert outputs == [("output", True), ("probabilities", True)]  # binary_data_output
    as_json = V.v2_inputs(body(x.tolist(), shape=x.shape))
    assert np.array_equal(as_json[0], got) and as_json[1] == [
        ("output", False),
        ("probabilities", False),
    ]
    chosen = [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "output"}]
    assert V.v2_inputs(*V.v2_body(*binary_request(x, chosen)))[1] == [
        ("probabilities", True),
        ("output", False),
    ]


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda raw, n: (raw, "12x"), "header_length"),
        (lambda raw, n: (raw, str(len(raw) + 1)), "header_length"),
        (lambda raw, n: (raw, "9" * 5000), "header_length"),
        (lambda raw, n: (raw + b"\0\0\0\0", n), "binary_size_matches_body"),
        (lambda raw, n: (raw[:-4], n), "binary_size_matches_body"),
        (lambda raw, n: (raw, None), "json"),  # the bytes read as JSON: not valid
        (lambda raw, n: (raw, str(int(n) - 1)), "json"),
    ],
    ids=[
        "not-a-number",
        "past-the-body",
        "huge",
        "bytes-left",
        "bytes-missing",
        "no-header",
        "cut-header",
    ],
)
def test_binary_sizes_checked(change, rule):
    raw, n = change(*binary_request(np.ones((2, 4))))
    e = binary_refused(raw, n)
    assert (e.status, e.rule) == (400, rule), e.message


def test_binary_size_must_match_shape_and_exclude_json_data():
    raw, n = binary_request(np.ones((2, 4)))
    b = json.loads(raw[: int(n)])
    b["inputs"][0]["parameters"]["binary_data_size"] = 16  # 2 x 4 FP32 are 32 bytes
    header = json.dumps(b).encode()
    e = binary_refused(header + b"\0" * 16, str(len(header)))
    assert (e.rule, e.loc) == (
        "binary_size_matches_shape",
        ["inputs", 0, "parameters", "binary_data_size"],
    )
    assert "32" in e.message
    both = body([1, 2, 3, 4], parameters={"binary_data_size": 16})
    header = json.dumps(both).encode()
    assert binary_refused(header + b"\0" * 16, str(len(header))).rule == "binary_or_json_data"
    for size in (-4, "16", 16.0, True):
        e = refused(body(None, parameters={"binary_data_size": size}))
        assert e.rule == "binary_data_size", size


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_binary_values_refused(bad):
    x = np.ones((3, 4), dtype=np.float32)
    x[2, 1] = bad
    e = binary_refused(*binary_request(x))
    assert (e.rule, e.loc) == ("finite_required", ["inputs", 0, "data", 2, 1])


def test_binary_body_bounded_by_the_model_limit():
    raw, n = binary_request(np.ones((64, 4)))
    padded = raw + b"\0" * (V.max_body - len(raw) + 1)
    with pytest.raises(RequestError) as e:
        V.v2_body(padded, n)
    assert (e.value.status, e.value.rule) == (413, "model_body_limit")
    e = binary_refused(*binary_request(np.ones((65, 4))))
    assert e.rule == "max_rows"


@pytest.mark.parametrize(
    ("outputs", "parameters", "rule"),
    [
        ([{"name": "output", "parameters": {"binary_data": "yes"}}], None, "bool_required"),
        (
            [{"name": "output", "parameters": {"classification": 2}}],
            None,
            "classification_unsupported",
        ),
        ([{"name": "output", "parameters": [1]}], None, "object_required"),
        (None, {"binary_data_output": 1}, "bool_required"),
        (None, [1], "object_required"),
    ],
)
def test_output_options_checked(outputs, parameters, rule):
    b = body([1, 2, 3, 4])
    if outputs is not None:
        b["outputs"] = outputs
    if parameters is not None:
        b["parameters"] = parameters
    assert refused(b).rule == rule


def outcome(data, shape=(2, 4)):
    """The array a v2 request's data reads as, or its refusal's fields."""
    try:
        return V.v2_inputs(body(data, shape=shape))[0].tolist()
    except RequestError as e:
        return (e.status, e.reason, e.rule, e.loc, e.message)


@pytest.mark.parametrize(
    "data",
    [
        [0.5, 1, -2.25, 3, 4e-30, -0.0, 6, 7],
        [[0.5, 1, -2.25, 3], [4, 5, 6, 7]],
        [1, 2, 3, 4, 5, 6, 7, 2**70 + 1],  # past int64, within double
        [1, 2, 3, 4, 5, 6, 7, 10**400],  # past double
        [1, 2, 3, 4, 5, 6, 7, 1e39],  # past float32
        [1, 2, 3, 4, 5, 6, 7, json.loads("-1e999")],
        [1, 2, 3, True, 5, 6, 7, 8],
        [1, 2, 3, "4", 5, 6, 7, 8],
        [1, 2, 3, None, 5, 6, 7, 8],
        [[1, 2, 3, 4], [5, 6, 7, [8]]],
        [[1, 2, 3], [4, 5, 6, 7, 8]],
        [[1, 2], [3, 4], [5, 6], [7, 8]],
        [[[1, 2, 3, 4]], [[5, 6, 7, 8]]],
        [[1, 2, 3, 4], 5, 6, 7, 8],
        [1, 2, 3, 4, 5, 6, 7],
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
        [[1, 2, 3, 4], [5, 6, 7, "8"]],
        [[1, 2, 3, 4], []],
    ],
)
def test_plain_lists_read_as_the_strict_walk_reads_them(data):
    """Plain lists of numbers are read in one numpy call; a list subclass always takes the strict
    walk: both give the same array, or the same refusal."""
    strict = Counted(data)
    assert outcome(data) == outcome(strict)
    assert strict.seen > 0  # the subclass did take the walk


def test_plain_lists_nested_as_a_deeper_shape():
    image = Validator(manifests.manifest("cnn", [1, 2, 3], "classification"), max_rows=8)
    x = np.arange(12, dtype=np.float32).reshape(2, 1, 2, 3)
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 2, 3]}]}
    for data in (x.tolist(), x.reshape(-1).tolist(), x.reshape(2, 6).tolist()):
        request["inputs"][0]["data"] = data
        got = image.v2_inputs(request)[0]
        assert got.dtype == np.float32 and np.array_equal(got, x)
