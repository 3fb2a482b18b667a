"""The default variant: the best for a stated objective on this provider, within the accuracy budget,
judged by how the service will run each variant."""

from __future__ import annotations

from typing import Any

OBJECTIVES = ("latency", "throughput", "balanced")
DEFAULT_OBJECTIVE = "balanced"
BALANCED_P50 = 1.25  # balanced: a variant's batch-1 p50 may be at most this multiple of fp32's

RULES = {
    "latency": "lowest batch-1 p50",
    "throughput": "most rows/s as served",
    "balanced": f"most rows/s as served among variants with batch-1 p50 at most {BALANCED_P50}x fp32's",
}


def served(entry: dict[str, Any]) -> tuple[float, str]:
    """(rows/s as the service runs the variant, how): batched rows/s, unless batch-coupled
    operators make the service run it one request per call, where it serves its batch-1 rows/s."""
    speed = entry["speed"]
    if entry.get("batch_coupled_ops"):
        return 1000.0 / speed["p50_ms"], "per-request"
    return speed["throughput_rps"], "batched"


def _candidate(entry: dict[str, Any]) -> dict[str, Any]:
    """The figures of one variant that the rule reads (only its metric when it was not measured)."""
    out: dict[str, Any] = {"metric": entry.get("test_metric")}
    if entry.get("speed"):
        rps, how = served(entry)
        out.update(
            p50_ms=entry["speed"]["p50_ms"],
            batched_rps=entry["speed"]["throughput_rps"],
            served_rps=rps,
            served_as=how,
        )
    return out


def _excluded(
    name: str, entry: dict[str, Any], fp32: dict[str, Any], budget: float, provider: str
) -> str | None:
    """Why a variant cannot be the default whatever the objective, or None."""
    if not entry.get("shipped"):
        return f"not shipped ({entry.get('reason') or 'no reason recorded'})"
    if provider not in entry.get("providers", [provider]):
        return f"runs on {', '.join(entry['providers'])}, not {provider}"
    loss = fp32["test_metric"] - entry["test_metric"]
    if loss > budget:
        return f"loses {loss:.4f} of the metric, over the budget {budget}"
    if name == "fp32" or entry.get("speed"):
        return None
    return "not measured"


def _describe(c: dict[str, Any]) -> str:
    """p50 and served throughput of a candidate, in words."""
    return f"p50 {c['p50_ms']:.4f} ms, {c['served_rps']:,.0f} rows/s {c['served_as']}"


def choose_default(
    variants: dict[str, dict[str, Any]],
    budget: float,
    provider: str,
    objective: str = DEFAULT_OBJECTIVE,
    batch: int = 1,
) -> dict[str, Any]:
    """The choice record (manifest `choice` plus `reason`): among shipped variants that run on
    `provider` and lose at most `budget` of fp32's test metric, the best by `objective`."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    fp32 = variants.get("fp32")
    if not fp32 or not fp32.get("shipped") or not fp32.get("speed"):
        raise ValueError("fp32 must be shipped and measured: every other variant is held to it")
    cands = {name: _candidate(v) for name, v in variants.items()}
    p50_cap = BALANCED_P50 * cands["fp32"]["p50_ms"]
    eligible = []
    for name, v in variants.items():
        lost = _excluded(name, v, fp32, budget, provider)
        if lost is None and objective == "balanced" and cands[name]["p50_ms"] > p50_cap:
            lost = f"batch-1 p50 {cands[name]['p50_ms']:.4f} ms is over {BALANCED_P50}x fp32's"
        if lost is None:
            eligible.append(name)
        cands[name]["lost"] = lost

    def score(name: str) -> float:
        c = cands[name]
        return -c["p50_ms"] if objective == "latency" else c["served_rps"]

    best = max(eligible, key=score)  # fp32 is always eligible; ties keep the earlier variant
    b = cands[best]
    for name in eligible:
        if name != best:
            worse = "slower at batch 1" if objective == "latency" else "fewer rows/s as served"
            cands[name]["lost"] = f"{worse} ({_describe(cands[name])})"
    reason = (
        f"{best}: {RULES[objective]} (objective {objective}) on {provider} within the accuracy "
        f"budget {budget}: {_describe(b)}, metric {b['metric']:.4f}"
    )
    if best != "fp32":
        reason += f"; fp32 {_describe(cands['fp32'])}, metric {cands['fp32']['metric']:.4f}"
    lost = [f"{n} {c['lost']}" for n, c in cands.items() if c["lost"]]
    if lost:
        reason += "; not chosen: " + "; ".join(lost)
    return {
        "objective": objective,
        "rule": RULES[objective],
        "provider": provider,
        "batch": batch,
        "chosen": best,
        "candidates": cands,
        "reason": reason,
    }
