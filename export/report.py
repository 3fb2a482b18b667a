"""The human-readable side of a package: report.md (table) and report.png (latency and metric bars)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nnship.contracts import Manifest, Speed, Variant
from nnship.io import atomic_write


def _row(name: str, v: Variant, torch_speed: Speed) -> str:
    """One variant's line of the table."""
    if not v.shipped and v.speed is None:
        return f"| {name} | no | — | — | — | — | — | — | — | {v.reason or ''} |"
    s, parity = v.speed, v.parity or {}
    return (
        f"| {name} | {'yes' if v.shipped else 'no'} | {v.test_metric:.4f} "
        f"| {v.metric_delta or 0:+.4f} | {parity['max_abs']:.2e} | {s.p50_ms:.4f} / {s.p99_ms:.4f} "
        f"| {torch_speed.p50_ms / s.p50_ms:.2f}x | {s.throughput_rps:,.0f} "
        f"({s.throughput_rps / torch_speed.throughput_rps:.2f}x) | {(v.size_bytes or 0) / 1024:,.0f} KiB "
        f"| {v.reason or ''} |"
    )


def write_report(directory: Path, manifest: Manifest) -> None:
    """report.md and report.png of a package's manifest, written atomically into `directory`."""
    reference, m = manifest.pytorch, manifest.measured_on or {}
    t = reference.speed
    lines = [
        f"# {manifest.model} — export report",
        "",
        f"{manifest.family} on {manifest.dataset}; measured on {m['provider']} with {m['threads']} "
        f"thread(s); throughput at batch {m['bench_batch']}; metric `{manifest.metric}` on the test split.",
        "",
        f"**Default variant: {manifest.default_variant}** — {manifest.default_reason}.",
        f"GPU variant: {manifest.gpu_choice}.",
        "",
        "| variant | shipped | metric | Δ vs fp32 | max abs diff vs PyTorch | p50 / p99 ms (batch 1) "
        "| p50 speed-up vs PyTorch | rows/s (vs PyTorch) | size | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| PyTorch eager | — | {reference.test_metric:.4f} | — | — "
        f"| {t.p50_ms:.4f} / {t.p99_ms:.4f} | 1.00x | {t.throughput_rps:,.0f} | — | baseline |",
    ]
    lines += [_row(n, v, t) for n, v in manifest.variants.items()]
    text = "\n".join(lines) + "\n"
    atomic_write(directory / "report.md", lambda p: p.write_text(text))

    measured = {n: v for n, v in manifest.variants.items() if v.speed is not None}
    names = ["pytorch", *measured]
    p50 = [t.p50_ms, *[v.speed.p50_ms for v in measured.values()]]
    metric = [reference.test_metric, *[v.test_metric for v in measured.values()]]
    colors = ["grey"] + [
        "tab:green" if n == manifest.default_variant else "tab:blue" for n in measured
    ]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar(names, p50, color=colors)
    a.set(ylabel="ms", title="batch-1 latency p50 (lower is better)")
    b.bar(names, metric, color=colors)
    lo = min(metric)
    b.set(ylim=(max(0.0, lo - 0.05), max(metric) + 0.01), title=manifest.metric)
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
    atomic_write(
        directory / "report.png",
        lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"),
    )
    plt.close(fig)
