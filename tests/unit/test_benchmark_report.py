"""The serving benchmark's report: bars judged from the figures, profile stacks bucketed."""

from nnship.loadtests.benchmark import CONCURRENCY, WIDE, render, summarize_profile


def cell(rps, p50=1.0, errors=0, cpu=500.0):
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": 2 * p50,
        "errors": errors,
        "cpu_us_per_request": cpu,
    }


def results(digits_ratio, heavy_ratio, p50_gap=0.2, errors=0, shed=0):
    def server(rps, p50=1.0, errs=0):
        return {c: cell(rps, p50, errs) for c in CONCURRENCY}

    profile = {"clients": 16, "cpu_us_per_request": 200.0, "shares": [["nnship guard", 0.25]]}
    d = {
        "nnship": {
            **server(1000 * digits_ratio, 1.0 + p50_gap, errors),
            "shed": shed,
            "mean_batch": 9.0,
            "profile": profile,
        },
        "nnship-bentoml-route": server(500),
        "bare": {**server(1000), "profile": profile},
        "naive": server(900),
        "echo": server(3000),
        "nnship (2 workers)": {WIDE: cell(1500 * digits_ratio)},
        "bare (2 workers)": {WIDE: cell(1200)},
    }
    h = {
        "nnship": {**server(100 * heavy_ratio), "shed": 0, "mean_batch": 20.0},
        "bare": server(100),
        "naive": server(100),
        "echo": server(3000),
    }
    return {"digits-cnn": d, "digits-heavy": h}


def bars(text):
    """The report's bar table: name -> pass / FAIL."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] in ("pass", "FAIL"):
            out[cells[0]] = cells[1]
    return out


def test_bars_follow_the_figures():
    text, ok = render(results(1.0, 6.0), 10)
    assert ok and set(bars(text).values()) == {"pass"}
    assert "| digits-cnn | nnship-bentoml-route | 64 | 500 |" in text
    assert "| digits-cnn | bare (2 workers) | 64 | 1,200 |" in text
    assert "digits-cnn nnship: 1,000 -> 1,500 req/s (1.50x)" in text
    assert "| nnship guard | 25.0% | 50 |" in text  # share of 200 µs a request
    text, ok = render(results(0.99, 6.0), 10)
    assert not ok and bars(text)["digits-cnn, 64 clients: nnship >= 1.0x bare throughput"] == "FAIL"
    text, ok = render(results(1.0, 5.9), 10)
    assert not ok and "5.90x" in text
    text, ok = render(results(1.0, 6.0, p50_gap=0.31), 10)
    assert not ok
    assert not render(results(1.0, 6.0, errors=1), 10)[1]
    assert not render(results(1.0, 6.0, shed=3), 10)[1]


def test_profile_buckets_take_the_innermost_match():
    raw = "\n".join(
        [
            "main (run.py:1);Guard.__call__ (service/security.py:9);Session.run (onnxruntime/capi/x.py:3) 30",
            "main (run.py:1);Guard.__call__ (service/security.py:9) 10",
            "main (run.py:1);Validator.predict_inputs (service/validation.py:5) 20",
            "main (run.py:1) 40",
        ]
    )
    shares = dict(summarize_profile(raw))
    assert shares["ONNX Runtime inference"] == 0.3
    assert shares["nnship guard"] == 0.1
    assert shares["nnship validation"] == 0.2
    assert shares["idle / other"] == 0.4


def test_the_heavy_gap_is_computed_from_this_runs_figures():
    from nnship.loadtests.benchmark import _cost_at, _heavy_gap

    costs = {1: 1800.0, 8: 500.0, 16: 400.0, 32: 260.0, 64: 210.0, 128: 180.0}
    assert _cost_at(costs, 0.5) == 1800.0
    assert _cost_at(costs, 24) == 330.0  # halfway between 16 and 32
    assert _cost_at(costs, 500) == 180.0
    h = results(1.0, 5.0)["digits-heavy"]
    # nnship: 500 req/s on 1.5 cores, 16-row batches; bare: 100 req/s
    h["nnship"][WIDE] = {**cell(500, cpu=3000.0), "cpu_cores": 1.5, "mean_batch": 16.0}
    text = "\n".join(_heavy_gap(h, costs))
    assert "stops at 5.00x bare" in text
    assert "about 400 µs a row" in text and "about 2,600 µs" in text  # 3,000 - 400
    # 6x is 600 req/s: 2,500 µs a request on 1.5 cores, so inference may cost at most... none left
    assert "600 req/s" in text and "2,500 µs a request" in text
    assert "more than the 128-row batches measured" in text
    h["nnship"][WIDE]["cpu_us_per_request"] = 2600.0  # rest 2,200: 300 µs a row allowed
    text = "\n".join(_heavy_gap(h, costs))
    assert "at most 300 µs a row: batches of about 32 rows or more" in text
    assert "about 32 requests (measured: 16.0)" in text and "More clients" not in text
    h["nnship"][2 * WIDE] = {**cell(650), "mean_batch": 40.0}
    text = "\n".join(_heavy_gap(h, costs))
    assert "at 128 clients nnship served 650 req/s in batches of 40.0 rows (6.50x bare's" in text


def test_the_report_shows_the_wide_cells_mean_batch_and_the_heavy_section():
    res = results(0.9, 5.0)
    res["digits-cnn"]["nnship"][WIDE]["mean_batch"] = 4.0
    res["digits-heavy"]["nnship"][WIDE].update(mean_batch=20.0, cpu_cores=1.5)
    costs = {"digits-heavy": {1: 1800.0, 8: 500.0, 16: 400.0, 32: 260.0, 64: 210.0, 128: 180.0}}
    text, ok = render(res, 10, costs=costs)
    assert not ok
    assert "digits-cnn 9.0 and 4.0, digits-heavy 20.0 and 20.0" in text
    assert "## Why digits-heavy stops at 5.00x bare (64 clients)" in text
    assert "1: 1,800, 8: 500, 16: 400, 32: 260, 64: 210, 128: 180" in text
    assert "the lane, guard, validation, batching, metrics, middleware) costs nnship 50 µs" in text
    assert "## Why digits-heavy" not in render(res, 10)[0]  # no costs measured, no section
