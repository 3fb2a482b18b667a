"""The human-readable side of a package: report.md (table), report.png (latency, served throughput
and metric per variant) and the summary `nnship export` prints."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from nnship.contracts import Candidate, Manifest, Speed, Variant
from nnship.io import atomic_write

DEFAULT_COLOR, OTHER_COLOR, PYTORCH_COLOR = "tab:green", "tab:blue", "grey"


def diff_header(manifest: Manifest) -> str:
    """What the parity column measures: probabilities for classification, raw outputs otherwise."""
    what = "probability" if manifest.classification else "raw output"
    return f"max |Δ {what}| vs PyTorch"


def _diff(v: Variant) -> str:
    return f"{v.output_diff.max_abs:.2e}" if v.output_diff else "—"


def _candidate(manifest: Manifest, name: str) -> Candidate | None:
    return manifest.choice.candidates.get(name) if manifest.choice else None


def _note(manifest: Manifest, name: str, v: Variant) -> str:
    """'default', or why the variant lost the choice (or was not shipped)."""
    if name == manifest.default_variant:
        return "**default**"
    c = _candidate(manifest, name)
    return (c.lost if c and c.lost else v.reason) or ""


def _served(manifest: Manifest, name: str) -> str:
    c = _candidate(manifest, name)
    return f"{c.served_rps:,.0f} ({c.served_as})" if c and c.served_rps is not None else "—"


def _row(manifest: Manifest, name: str, v: Variant, torch_speed: Speed) -> str:
    """One variant's line of the table."""
    note = _note(manifest, name, v).replace("|", "/")
    if v.speed is None:
        return f"| {name} | no | — | — | — | — | — | — | — | — | {note} |"
    s = v.speed
    return (
        f"| {name} | {'yes' if v.shipped else 'no'} | {v.test_metric:.4f} "
        f"| {v.metric_delta or 0:+.4f} | {_diff(v)} | {s.p50_ms:.4f} / {s.p99_ms:.4f} "
        f"| {torch_speed.p50_ms / s.p50_ms:.2f}x | {s.throughput_rps:,.0f} "
        f"({s.throughput_rps / torch_speed.throughput_rps:.2f}x) | {_served(manifest, name)} "
        f"| {(v.size_bytes or 0) / 1024:,.0f} KiB | {note} |"
    )


def headline(manifest: Manifest) -> str:
    """Model, data set and the default variant's metric, for titles."""
    v = manifest.variants[manifest.default_variant]
    return (
        f"{manifest.model} ({manifest.family} on {manifest.dataset}): {manifest.metric} "
        f"{v.test_metric:.4f} with {manifest.default_variant}"
    )


def report_text(manifest: Manifest) -> str:
    """report.md: how it was measured, the default and why, one table row per variant."""
    reference, m = manifest.pytorch, manifest.measured_on or {}
    diff = diff_header(manifest).replace("|", "\\|")  # a bare | would split the table cell
    t, batch = reference.speed, m.get("bench_batch")
    objective = manifest.choice.objective if manifest.choice else "—"
    lines = [
        f"# {manifest.model} — export report",
        "",
        f"{manifest.family} on {manifest.dataset}; measured on {m['provider']} with {m['threads']} "
        f"thread(s); batched throughput at batch {batch}; metric `{manifest.metric}` on the test "
        "split.",
        "",
        f"**Default variant: {manifest.default_variant}** (objective {objective}) — "
        f"{manifest.default_reason}.",
        f"GPU variant: {manifest.gpu_choice}.",
        "",
        f"`{diff_header(manifest)}`: the largest difference from PyTorch eager on the test split in "
        "what a client reads (class probabilities for classification, the output for regression). "
        "`rows/s served`: batched rows/s, or batch-1 rows/s (per-request) for a variant whose graph "
        "ties rows of one call together, which the service runs one request per call.",
        "",
        f"| variant | shipped | metric | Δ vs fp32 | {diff} "
        f"| p50 / p99 ms (batch 1) | p50 speed-up vs PyTorch | rows/s batched @{batch} (vs PyTorch) "
        "| rows/s served | size | note |",
        "| --- " * 11 + "|",
        f"| PyTorch eager | — | {reference.test_metric:.4f} | — | — "
        f"| {t.p50_ms:.4f} / {t.p99_ms:.4f} | 1.00x | {t.throughput_rps:,.0f} | — | — | baseline |",
    ]
    lines += [_row(manifest, n, v, t) for n, v in manifest.variants.items()]
    return "\n".join(lines) + "\n"


def summary_lines(manifest: Manifest) -> list[str]:
    """The table `nnship export` prints: one line per variant, the default marked."""
    head = diff_header(manifest)
    lines = [
        f"  {'variant':<13} {'p50 ms':>8} {'rows/s served':>24} {'metric':>8} {head:>28}  note"
    ]
    for name, v in manifest.variants.items():
        p50 = f"{v.speed.p50_ms:.4f}" if v.speed else "—"
        metric = f"{v.test_metric:.4f}" if v.test_metric is not None else "—"
        lines.append(
            f"  {name:<13} {p50:>8} {_served(manifest, name):>24} {metric:>8} {_diff(v):>28}  "
            f"{_note(manifest, name, v).strip('*')}"
        )
    return lines


def _bars(ax, names: list[str], values: list[float], colors: list[str], fmt: str, hatches=None):
    """One panel's bars, each value written on its bar in `fmt`."""
    bars = ax.bar(names, values, color=colors)
    for bar, hatch in zip(bars, hatches or [""] * len(bars), strict=True):
        bar.set_hatch(hatch)
    ax.bar_label(bars, fmt=fmt, fontsize=7)
    ax.tick_params(axis="x", rotation=25)


def report_figure(manifest: Manifest) -> Figure:
    """Per variant and PyTorch eager: batch-1 p50, rows/s as served, and the test metric."""
    reference, batch = manifest.pytorch, (manifest.measured_on or {}).get("bench_batch")
    measured = {n: v for n, v in manifest.variants.items() if v.speed is not None}
    names = ["pytorch", *measured]
    colors = [PYTORCH_COLOR] + [
        DEFAULT_COLOR if n == manifest.default_variant else OTHER_COLOR for n in measured
    ]
    served, hatches = [reference.speed.throughput_rps], [""]
    for n, v in measured.items():
        c = _candidate(manifest, n)
        served.append(c.served_rps if c and c.served_rps is not None else v.speed.throughput_rps)
        hatches.append("//" if c and c.served_as == "per-request" else "")
    metric = [reference.test_metric, *[v.test_metric for v in measured.values()]]

    fig = Figure(figsize=(13, 4.2))
    a, b, c = fig.subplots(1, 3)
    p50 = [reference.speed.p50_ms, *[v.speed.p50_ms for v in measured.values()]]
    _bars(a, names, p50, colors, "{:.4f}")
    a.set(ylabel="ms", title="batch-1 latency p50 (lower is better)")
    _bars(b, names, served, colors, "{:,.0f}", hatches)
    b.set(ylabel="rows/s", title=f"throughput as served, batch {batch} (higher is better)")
    _bars(c, names, metric, colors, "{:.4f}")
    lo, hi = min(metric), max(metric)
    c.set(ylim=(lo - 0.05 * max(abs(lo), 1e-3), hi + 0.05 * max(abs(hi), 1e-3)))
    c.set(ylabel=manifest.metric, title=f"{manifest.metric} on the test split")
    objective = manifest.choice.objective if manifest.choice else "—"
    fig.legend(
        handles=[
            Patch(color=DEFAULT_COLOR, label=f"default ({objective})"),
            Patch(color=OTHER_COLOR, label="other variant"),
            Patch(color=PYTORCH_COLOR, label="PyTorch eager"),
            Patch(facecolor="white", edgecolor="black", hatch="//", label="served per request"),
        ],
        loc="lower center",
        ncol=4,
        bbox_to_anchor=(0.5, -0.08),
    )
    fig.suptitle(headline(manifest))
    fig.tight_layout()
    return fig


def write_report(directory: Path, manifest: Manifest) -> None:
    """report.md and report.png of a package's manifest, written atomically into `directory`."""
    text = report_text(manifest)
    atomic_write(directory / "report.md", lambda p: p.write_text(text))
    fig = report_figure(manifest)
    atomic_write(
        directory / "report.png",
        lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"),
    )
