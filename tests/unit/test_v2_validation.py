"""v2 requests: requested outputs, and size checks that come before any value is looked at."""

import json
import math

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
        "probabilities",
        "output",
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
