import pytest

from nnship.export.choose import choose_default


def v(metric, p50, rps, shipped=True, providers=None):
    d = {"shipped": shipped, "test_metric": metric, "speed": {"p50_ms": p50, "throughput_rps": rps}}
    if providers:
        d["providers"] = providers
    return d


CPU = "CPUExecutionProvider"


def test_fastest_within_budget_wins():
    name, reason = choose_default(
        {
            "fp32": v(0.99, 1.0, 100),
            "int8-dynamic": v(0.989, 0.5, 200),
            "int8-static": v(0.99, 0.7, 300),
        },
        0.003,
        CPU,
    )
    assert name == "int8-dynamic"
    assert "int8-dynamic: fastest" in reason and "budget 0.003" in reason


def test_over_budget_is_never_chosen():
    name, reason = choose_default(
        {"fp32": v(0.99, 1.0, 100), "int8-static": v(0.98, 0.2, 900)}, 0.003, CPU
    )
    assert name == "fp32"
    assert "int8-static loses 0.0100 > budget 0.003" in reason
    # a looser budget admits it
    assert (
        choose_default({"fp32": v(0.99, 1.0, 100), "int8-static": v(0.98, 0.2, 900)}, 0.02, CPU)[0]
        == "int8-static"
    )


@pytest.mark.parametrize("other", [v(0.99, 1.2, 900), v(0.99, 0.5, 90)])
def test_slower_than_fp32_is_never_chosen(other):
    name, reason = choose_default({"fp32": v(0.99, 1.0, 100), "int8-dynamic": other}, 0.003, CPU)
    assert name == "fp32" and "slower than fp32" in reason


def test_gpu_only_and_unshipped_variants_skipped_on_cpu():
    variants = {
        "fp32": v(0.99, 1.0, 100),
        "fp16": v(0.99, 0.1, 999, providers=["CUDAExecutionProvider"]),
        "int8-dynamic": v(0.99, 0.1, 999, shipped=False),
    }
    name, reason = choose_default(variants, 0.003, CPU)
    assert name == "fp32"
    assert "fp16 is for CUDAExecutionProvider" in reason and "int8-dynamic not shipped" in reason
    assert choose_default(variants, 0.003, "CUDAExecutionProvider")[0] == "fp16"


def test_fp32_required():
    with pytest.raises(ValueError, match="fp32 must be shipped"):
        choose_default({"int8-dynamic": v(0.99, 0.1, 9)}, 0.003, CPU)
