"""Population stability index of a sliding window against training quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from nnship.service.drift import (
    FLOOR,
    LEVELS,
    MAX_FEATURES,
    QUANTILES,
    DriftMonitor,
    DriftWindow,
    bin_edges,
    bins_of,
    monitored,
    psi,
)
from tests.manifests import manifest


def quantiles_of(train: np.ndarray) -> list[dict[str, float]]:
    qs = np.quantile(train, LEVELS, axis=0)
    return [
        {name: float(qs[i, f]) for i, name in enumerate(QUANTILES)} for f in range(train.shape[1])
    ]


def reference_psi(window: np.ndarray, q: dict[str, float]) -> float:
    """PSI written out bin by bin for one feature, without the vectorized code."""
    edges = [q[n] for n in QUANTILES]
    shares = np.diff([0.0, *LEVELS, 1.0])
    total = 0.0
    for b in range(len(edges) + 1):
        lo = -np.inf if b == 0 else edges[b - 1]
        hi = np.inf if b == len(edges) else edges[b]
        inside = np.mean((window > lo) & (window < hi))
        o = max(inside + 0.5 * np.mean(window == lo) + 0.5 * np.mean(window == hi), FLOOR)
        total += (o - shares[b]) * np.log(o / shares[b])
    return total


def test_psi_matches_the_formula_and_separates_shifted_from_unshifted():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 3))
    q = quantiles_of(train)
    window = DriftWindow(*bin_edges(q), size=2000)
    same = rng.normal(size=(2000, 3))
    shifted = same + np.array([0.0, 1.0, 3.0])
    window.add(same)
    assert np.allclose(window.psi(), [reference_psi(same[:, f], q[f]) for f in range(3)])
    assert (window.psi() < 0.05).all()
    window.add(shifted)
    got = window.psi()
    assert np.allclose(got, [reference_psi(shifted[:, f], q[f]) for f in range(3)])
    assert got[0] < 0.05 and got[1] > 0.5 and got[2] > 2.0


def test_window_slides_in_batches_of_any_size():
    """Counts after many uneven batches equal the counts of the last `size` rows alone."""
    rng = np.random.default_rng(1)
    q = quantiles_of(rng.normal(size=(1000, 2)))
    edges, expected = bin_edges(q)
    window = DriftWindow(edges, expected, size=100)
    seen = []
    for n in [7, 50, 1, 99, 230, 3, 100, 64]:
        batch = rng.normal(size=(n, 2)) * rng.uniform(0.5, 2)
        window.add(batch)
        seen.append(batch)
        last = np.concatenate(seen)[-100:]
        assert window.filled == len(last)
        direct = DriftWindow(edges, expected, size=100)
        direct.add(last)
        assert (window.counts == direct.counts).all()
        assert np.allclose(window.psi(), direct.psi())


def test_tied_and_missing_quantiles_merge_bins():
    """A constant feature's edges collapse into one; a missing quantile is skipped."""
    edges, expected = bin_edges(
        [
            {n: 0.0 for n in QUANTILES},
            {"q01": None, "q05": 1.0, "q25": 2.0, "q50": 3.0, "q75": 4.0, "q95": 5.0, "q99": None},
        ]
    )
    assert expected.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert edges[0, 0] == 0.0 and np.isinf(edges[0, 1:]).all()
    assert expected[0, 0] == pytest.approx(0.99) and expected[0, -1] == pytest.approx(0.01)
    assert bins_of(np.array([[0.0, 3.0]]), edges).tolist() == [[[0, 1], [2, 3]]]
    assert bins_of(np.array([[-1.0, 3.5]]), edges).tolist() == [[[0, 0], [3, 3]]]
    # a constant feature that stays constant does not drift; one that moves does
    zeros = psi(np.array([[1.0, 0, 0, 0, 0, 0]]), expected[:1])
    moved = psi(np.array([[0.0, 0, 0, 0, 0, 1.0]]), expected[:1])
    assert zeros[0] < 0.05 < 1.0 < moved[0]


def test_a_large_batch_is_binned_as_a_small_one_is():
    """The binary search (many rows) and the comparison with every edge (a few rows) agree on every
    value, those exactly on an edge and past the padded +inf edges included."""
    from nnship.service.drift import SEARCH_FROM_ROWS

    rng = np.random.default_rng(3)
    quantiles = [
        {n: float(v) for n, v in zip(QUANTILES, np.sort(rng.normal(size=7)), strict=True)}
        for _ in range(6)
    ]
    quantiles.append({n: 0.0 for n in QUANTILES})  # a constant feature: one edge, then +inf
    edges, _ = bin_edges(quantiles)
    x = rng.normal(scale=2, size=(300, len(quantiles)))
    x[::7] = np.where(np.isfinite(edges[:, 0]), edges[:, 0], 0.0)  # on the lowest edge
    x[1::7, :6] = edges[:6, 3]  # on a middle edge
    x[2::7] = 1e30  # above every finite edge
    assert len(x) >= SEARCH_FROM_ROWS
    one_by_one = np.concatenate([bins_of(x[i : i + 1], edges) for i in range(len(x))])
    assert bins_of(x, edges).tolist() == one_by_one.tolist()
    assert (
        bins_of(x.astype(np.float32), edges).tolist()
        == bins_of(x.astype(np.float32)[:8], edges).tolist()
        + bins_of(x.astype(np.float32)[8:], edges).tolist()
    )


class Gauge:
    """A stand-in for a prometheus gauge child: remembers the last value set."""

    value = None

    def set(self, value: float) -> None:
        self.value = value


def test_which_models_are_monitored():
    assert monitored(manifest(shape=(4,)))
    assert monitored(manifest(family="lstm", shape=(10, 3)))
    assert not monitored(manifest(family="cnn", shape=(1, 8, 8), feats=64))
    assert not monitored(manifest(shape=(MAX_FEATURES + 1,)))


def test_sequence_steps_count_as_rows_and_nothing_is_published_before_the_window_fills():
    m = manifest(family="gru", shape=(5, 2), low=0.0, high=10.0)  # q50 = 5 only: two bins
    gauges = [Gauge(), Gauge()]
    monitor = DriftMonitor(m, size=20, gauges=gauges)
    rows = np.tile(np.array([[4.0, 9.0], [6.0, 9.0]], dtype=np.float32), (3, 1, 1))  # (3, 2, 2)
    monitor.observe(rows[:, :1])  # 3 steps
    assert gauges[0].value is None
    monitor.observe(np.concatenate([rows] * 3))  # 18 more steps: the window of 20 is full
    assert monitor.window.filled == 20
    assert gauges[0].value < 0.02  # 11 of the last 20 steps below q50, 9 above
    assert gauges[1].value > 1.0  # every step above q50
