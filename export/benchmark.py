"""Speed of each family's exported variants against PyTorch eager, at 1 thread and all threads.

    python -m nnship.export.benchmark [--report reports/export-benchmark.md]

Trains the default mlp/digits, cnn/digits and lstm/digits-seq models, exports them (no store),
and measures PyTorch eager and every shipped variant side by side in one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from nnship.export.bench import measure, ort_runner, torch_runner
from nnship.export.package import ExportOptions, export_run, load_run
from nnship.io import atomic_write
from nnship.onnxrt import cpu_session
from nnship.training.train import TrainConfig, train

# family, dataset, bar for the batch-1 p50 speed-up of the default variant over PyTorch eager
FAMILIES = [("mlp", "digits", 3.0), ("cnn", "digits", 5.0), ("lstm", "digits-seq", 2.0)]
THROUGHPUT_BAR = 1.5


def bench_family(model: str, dataset: str, work: Path, seconds: float) -> dict:
    run = work / f"{model}-{dataset}"
    train(TrainConfig(model=model, dataset=dataset, out=str(run)))
    manifest = export_run(
        ExportOptions(str(run), name=f"{dataset}-{model}", store=False, bench_seconds=seconds)
    )
    stored = load_run(run)
    net, x = stored.model, stored.rows.x_test
    row, big = x[:1], np.resize(x, (256, *x.shape[1:]))
    rows: dict[int, dict[str, dict]] = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        rows[threads] = {
            "pytorch": measure(torch_runner(net, threads), row, big, seconds).as_dict()
        }
        for name in manifest.shipped:
            s = cpu_session(run / "package" / manifest.variants[name].file, threads)
            rows[threads][name] = measure(ort_runner(s), row, big, seconds).as_dict()
    return {"manifest": manifest, "speed": rows}


def render(results: dict, families: list) -> tuple[list[str], bool]:
    ok = True
    lines = [
        "| model | variant | threads | p50 ms | p99 ms | rows/s @256 | p50 speed-up | throughput ratio "
        "| test metric | Δ vs fp32 | note |",
        "| --- " * 11 + "|",
    ]
    summary = [
        "| model | default | p50 speed-up (1 thr / all) | throughput ratio (1 thr / all) | bar | Δ metric "
        "| result |",
        "| --- " * 7 + "|",
    ]
    for model, dataset, bar in families:
        r = results[model]
        m = r["manifest"]
        default = m.default_variant
        ups, tps = [], []
        for threads, speeds in r["speed"].items():
            base = speeds["pytorch"]
            for name, s in speeds.items():
                v = m.variants.get(name)
                up, tp = base["p50_ms"] / s["p50_ms"], s["throughput_rps"] / base["throughput_rps"]
                if name == default:
                    ups.append(up)
                    tps.append(tp)
                note = "default" if name == default else ""
                metric = f"{(v or m.pytorch).test_metric:.4f}"
                delta = f"{v.metric_delta:+.4f}" if v else "—"
                lines.append(
                    f"| {model}/{dataset} | {name} | {threads} | {s['p50_ms']:.4f} | {s['p99_ms']:.4f} "
                    f"| {s['throughput_rps']:,.0f} | {up:.2f}x | {tp:.2f}x | {metric} | {delta} | {note} |"
                )
        for name, v in m.variants.items():
            if not v.shipped:
                lines.append(
                    f"| {model}/{dataset} | {name} | — | — | — | — | — | — | — | — | not shipped: "
                    f"{v.reason or ''} |"
                )
        passed = (
            min(ups) >= bar
            and min(tps) >= THROUGHPUT_BAR
            and -m.variants[default].metric_delta <= 0.003
        )
        ok &= passed
        summary.append(
            f"| {model}/{dataset} | {default} ({m.choice.objective}) "
            f"| {' / '.join(f'{u:.2f}x' for u in ups)} "
            f"| {' / '.join(f'{t:.2f}x' for t in tps)} | p50 ≥ {bar}x, rows/s ≥ {THROUGHPUT_BAR}x "
            f"| {m.variants[default].metric_delta:+.4f} | {'pass' if passed else 'FAIL'} |"
        )
        summary.append("")
    return [*[s for s in summary if s], "", "All measurements:", "", *lines], ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", default="reports/export-benchmark.md")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum seconds per measurement")
    p.add_argument("--only", help="one family, e.g. mlp")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    families = [f for f in FAMILIES if not args.only or f[0] == args.only]
    with tempfile.TemporaryDirectory() as work:
        results = {m: bench_family(m, d, Path(work), args.seconds) for m, d, _ in families}
    body, ok = render(results, families)
    text = "\n".join(
        [
            "# Export benchmark",
            "",
            f"ONNX Runtime (CPU provider) against PyTorch eager on {os.cpu_count()} cores, same thread count on "
            "both sides, batch-1 latency and batch-256 throughput. Reproduce: `python -m nnship.export.benchmark`.",
            "",
            *body,
            "",
        ]
    )
    print(text)
    if not args.only:
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(report, lambda f: f.write_text(text))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
