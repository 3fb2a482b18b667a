"""The soak's arithmetic: histogram quantiles, lag figures and the verdict."""

import math

from nnship.loadtests.soak import Window, lag_figures, quantile, summarize

INF = math.inf


def test_quantile_interpolates_within_the_bucket():
    cumulative = {0.001: 50.0, 0.01: 90.0, 0.1: 100.0, INF: 100.0}
    assert quantile(0.5, cumulative) == 0.001
    assert math.isclose(quantile(0.7, cumulative), 0.001 + 0.009 * 0.5)
    assert math.isclose(quantile(0.99, cumulative), 0.01 + 0.09 * 0.9)
    assert quantile(0.99, {0.001: 0.0, INF: 0.0}) is None
    assert quantile(0.99, {0.001: 0.0, 0.01: 0.0, INF: 5.0}) == 0.01  # beyond the last bound


def test_lag_figures_in_ms():
    p99, mean = lag_figures({0.001: 10.0, 0.01: 10.0, INF: 10.0, -1.0: 0.005})
    assert math.isclose(p99, 0.99) and math.isclose(mean, 0.5)
    assert lag_figures({}) == (None, None)


def _windows(rss, errors=0):
    return [
        Window(
            t=5.0 * (i + 1), sent=10, ok=10 - errors, errors=errors, latencies=[0.01] * 10, rss_mb=r
        )
        for i, r in enumerate(rss)
    ]


def test_verdict_rss_growth_from_a_third_of_the_run():
    flat = summarize(_windows([100, 160, 160, 165, 165, 170]), 100.0, 50.0, 30.0)["summary"]
    assert flat["rss_baseline_mb"] == 160 and math.isclose(
        flat["rss_growth"], 10 / 160, rel_tol=1e-3
    )
    assert flat["pass"]
    leak = summarize(_windows([100, 100, 100, 110, 120, 130]), 100.0, 50.0, 30.0)["summary"]
    assert not leak["passed"]["rss_growth_under_10pct"] and not leak["pass"]
    errors = summarize(_windows([100] * 6, errors=1), 100.0, 50.0, 30.0)["summary"]
    assert errors["errors"] == 6 and not errors["pass"]
