import pytest

from nnship.export.choose import BALANCED_P50, choose_default, served

CPU = "CPUExecutionProvider"


def v(metric, p50, rps, shipped=True, providers=None, coupled=None):
    d = {"shipped": shipped, "test_metric": metric, "speed": {"p50_ms": p50, "throughput_rps": rps}}
    if providers:
        d["providers"] = providers
    if coupled:
        d["batch_coupled_ops"] = coupled
    return d


def wine(coupled=None):
    """The wine model's shape: the int8 variant is slower at batch 1, 1.9x fp32's batched rows/s."""
    return {
        "fp32": v(1.0, 0.020, 100_000),
        "int8-dynamic": v(1.0, 0.023, 190_000, coupled=coupled),
    }


@pytest.mark.parametrize(
    ("objective", "winner"),
    [("latency", "fp32"), ("throughput", "int8-dynamic"), ("balanced", "int8-dynamic")],
)
def test_wine_case_by_objective(objective, winner):
    choice = choose_default(wine(), 0.003, CPU, objective, batch=128)
    assert choice["chosen"] == winner and choice["objective"] == objective
    assert (
        choice["reason"].startswith(f"{winner}: ") and f"objective {objective}" in choice["reason"]
    )
    loser = "int8-dynamic" if winner == "fp32" else "fp32"
    assert choice["candidates"][winner]["lost"] is None
    expected = "slower at batch 1" if objective == "latency" else "fewer rows/s as served"
    assert choice["candidates"][loser]["lost"].startswith(expected)
    c = choice["candidates"]["int8-dynamic"]
    assert (c["p50_ms"], c["batched_rps"], c["served_rps"], c["served_as"]) == (
        0.023,
        190_000,
        190_000,
        "batched",
    )
    assert choice["batch"] == 128 and choice["provider"] == CPU


@pytest.mark.parametrize("objective", ["throughput", "balanced"])
def test_batch_coupled_variant_counts_its_batch_1_rows_per_second(objective):
    choice = choose_default(wine(coupled=["DynamicQuantizeLinear"]), 0.003, CPU, objective)
    assert choice["chosen"] == "fp32"
    c = choice["candidates"]["int8-dynamic"]
    assert c["served_as"] == "per-request" and c["served_rps"] == pytest.approx(1000 / 0.023)
    assert c["batched_rps"] == 190_000 and "per-request" in c["lost"]


def test_served_figure():
    assert served(v(1.0, 0.5, 9000)) == (9000, "batched")
    assert served(v(1.0, 0.5, 9000, coupled=["DynamicQuantizeLinear"])) == (2000.0, "per-request")


def test_coupled_variant_still_wins_when_its_per_request_rate_is_best():
    variants = {"fp32": v(1.0, 1.0, 900), "int8-dynamic": v(1.0, 0.5, 5000, coupled=["X"])}
    choice = choose_default(variants, 0.003, CPU, "throughput")
    assert choice["chosen"] == "int8-dynamic"
    assert choice["candidates"]["int8-dynamic"]["served_rps"] == 2000.0


def test_balanced_caps_batch_1_latency_against_fp32():
    slow = BALANCED_P50 * 1.01
    variants = {"fp32": v(1.0, 1.0, 100), "int8-static": v(1.0, slow, 900)}
    balanced = choose_default(variants, 0.003, CPU, "balanced")
    assert balanced["chosen"] == "fp32"
    assert f"over {BALANCED_P50}x fp32's" in balanced["candidates"]["int8-static"]["lost"]
    assert choose_default(variants, 0.003, CPU, "throughput")["chosen"] == "int8-static"
    variants["int8-static"] = v(1.0, BALANCED_P50 * 0.99, 900)
    assert choose_default(variants, 0.003, CPU, "balanced")["chosen"] == "int8-static"


@pytest.mark.parametrize("objective", ["latency", "throughput", "balanced"])
def test_over_budget_is_never_chosen(objective):
    variants = {"fp32": v(0.99, 1.0, 100), "int8-static": v(0.98, 0.2, 900)}
    choice = choose_default(variants, 0.003, CPU, objective)
    assert choice["chosen"] == "fp32"
    assert choice["candidates"]["int8-static"]["lost"] == (
        "loses 0.0100 of the metric, over the budget 0.003"
    )
    assert "int8-static loses 0.0100" in choice["reason"]
    assert choose_default(variants, 0.02, CPU, objective)["chosen"] == "int8-static"


@pytest.mark.parametrize("objective", ["latency", "throughput", "balanced"])
def test_gpu_only_and_unshipped_variants_skipped_on_cpu(objective):
    variants = {
        "fp32": v(0.99, 1.0, 100),
        "fp16": v(0.99, 0.1, 999, providers=["CUDAExecutionProvider"]),
        "int8-dynamic": {**v(0.99, 0.1, 999, shipped=False), "reason": "build failed"},
    }
    choice = choose_default(variants, 0.003, CPU, objective)
    assert choice["chosen"] == "fp32"
    lost = {n: c["lost"] for n, c in choice["candidates"].items()}
    assert lost["fp16"] == f"runs on CUDAExecutionProvider, not {CPU}"
    assert lost["int8-dynamic"] == "not shipped (build failed)"
    assert choose_default(variants, 0.003, "CUDAExecutionProvider", objective)["chosen"] == "fp16"


def test_latency_ignores_throughput():
    variants = {"fp32": v(1.0, 1.0, 1000), "int8-static": v(1.0, 0.9, 10)}
    assert choose_default(variants, 0.003, CPU, "latency")["chosen"] == "int8-static"
    assert choose_default(variants, 0.003, CPU, "throughput")["chosen"] == "fp32"


def test_ties_keep_fp32():
    variants = {"fp32": v(1.0, 1.0, 100), "int8-static": v(1.0, 1.0, 100)}
    for objective in ("latency", "throughput", "balanced"):
        assert choose_default(variants, 0.003, CPU, objective)["chosen"] == "fp32"


def test_fp32_required_and_objective_checked():
    with pytest.raises(ValueError, match="fp32 must be shipped"):
        choose_default({"int8-dynamic": v(0.99, 0.1, 9)}, 0.003, CPU)
    with pytest.raises(ValueError, match="objective 'fastest' is not one of"):
        choose_default({"fp32": v(0.99, 0.1, 9)}, 0.003, CPU, "fastest")
