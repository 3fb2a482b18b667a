"""The default-variant rule: fastest on this provider, within the accuracy budget, never slower than fp32."""

from __future__ import annotations

from typing import Any


def choose_default(
    variants: dict[str, dict[str, Any]], budget: float, provider: str
) -> tuple[str, str]:
    """(name, reason). A candidate is shipped, runs on `provider`, loses at most `budget` of the
    test metric against fp32, and is no slower than fp32 in batch-1 p50 nor batch throughput."""
    fp32 = variants.get("fp32")
    if not fp32 or not fp32.get("shipped"):
        raise ValueError("fp32 must be shipped: it is the reference every other variant is held to")
    base_metric, base = fp32["test_metric"], fp32["speed"]
    best, why_not = "fp32", []
    for name, v in variants.items():
        if name == "fp32":
            continue
        if not v.get("shipped"):
            why_not.append(f"{name} not shipped")
            continue
        if provider not in v.get("providers", [provider]):
            why_not.append(f"{name} is for {', '.join(v['providers'])}")
            continue
        loss = base_metric - v["test_metric"]
        if loss > budget:
            why_not.append(f"{name} loses {loss:.4f} > budget {budget}")
            continue
        s = v["speed"]
        if s["p50_ms"] > base["p50_ms"] or s["throughput_rps"] < base["throughput_rps"]:
            why_not.append(
                f"{name} slower than fp32 (p50 {s['p50_ms']:.4f} ms, {s['throughput_rps']:.0f} rows/s)"
            )
            continue
        if s["p50_ms"] < variants[best]["speed"]["p50_ms"]:
            best = name
    b = variants[best]
    reason = (
        f"{best}: fastest on {provider} within the accuracy budget {budget} "
        f"(p50 {b['speed']['p50_ms']:.4f} ms vs fp32 {base['p50_ms']:.4f} ms; "
        f"metric {b['test_metric']:.4f} vs fp32 {base_metric:.4f})"
    )
    if why_not:
        reason += "; not chosen: " + "; ".join(why_not)
    return best, reason
