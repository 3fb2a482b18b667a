"""JSON answers: float32 values as the shortest decimals that read back to the same float32."""

import json

import numpy as np

from nnship.service.encoding import dumps


def shortest_digits(v: np.float32) -> int:
    """Significant digits of numpy's shortest round-trip representation of a float32."""
    mantissa = np.format_float_scientific(v, unique=True, trim="-").split("e")[0]
    return len(mantissa.lstrip("-").replace(".", "").lstrip("0")) or 1


def digits(token: str) -> int:
    mantissa = token.lower().split("e")[0].lstrip("-")
    whole, _, frac = mantissa.partition(".")
    if frac.strip("0") == "":  # 100.0 -> 1 significant digit, 0.0 -> 1
        return len(whole.lstrip("0").rstrip("0")) or 1
    return len((whole + frac).lstrip("0"))


def test_float32_round_trips_with_fewest_digits():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    special = np.array(
        [0.1, 1 / 3, 0.5, 100.0, 1e7, -2.5e-8, 1e-45, 1.17549435e-38, 1e-40, 3.4028235e38, 0.0],
        dtype=np.float32,
    )
    tiny_huge = np.concatenate([np.float32(10.0) ** np.arange(-45, 39, dtype=np.float32), special])
    values = np.concatenate([values[np.isfinite(values)], tiny_huge, -tiny_huge])
    text = dumps({"data": values}).decode()
    tokens = text[len('{"data":[') : -2].split(",")
    assert len(tokens) == len(values)
    back = np.array([float(t) for t in tokens], dtype=np.float32)
    assert np.array_equal(back, values)  # every value reads back to the same float32
    for t, v in zip(tokens, values, strict=True):  # and has no more digits than it needs
        assert digits(t) <= shortest_digits(v), (t, v)
    assert json.loads(dumps({"p": np.array([[0.1, 0.7]], dtype=np.float32)})) == {"p": [[0.1, 0.7]]}
