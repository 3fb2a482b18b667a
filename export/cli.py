"""`nnship export` / `python -m nnship.export`: a thin parser over export_run()."""

from __future__ import annotations

import argparse

from nnship.export.choose import BALANCED_P50, DEFAULT_OBJECTIVE, OBJECTIVES
from nnship.export.package import ExportOptions, export_run
from nnship.export.report import summary_lines
from nnship.export.variants import VARIANTS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `nnship train`")
    p.add_argument("--name", help="model name in the store (default: the run directory's name)")
    p.add_argument(
        "--accuracy-budget",
        type=float,
        default=0.003,
        help="largest test-metric loss against fp32 that the default variant may have",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=DEFAULT_OBJECTIVE,
        help="what the default variant is best at: latency (lowest batch-1 p50), throughput (most "
        f"rows/s as the service runs it), balanced (most rows/s with p50 at most {BALANCED_P50}x "
        f"fp32's); default {DEFAULT_OBJECTIVE}",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {','.join(VARIANTS)} (fp32 is always built)",
    )
    p.add_argument(
        "--out",
        help="package directory (default: RUN_DIR/package, which a new export replaces)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing package at --out (a folder that is not a package never is)",
    )
    p.add_argument("--max-batch", type=int, default=1000, help="largest batch the parity gate runs")
    p.add_argument(
        "--threads", type=int, help="intra-op threads for measurements (default: all cores)"
    )
    p.add_argument(
        "--no-store",
        dest="store",
        action="store_false",
        help="write the package directory only, not the BentoML model store",
    )


def run(args: argparse.Namespace) -> int:
    opts = ExportOptions(
        run_dir=args.run_dir,
        name=args.name,
        accuracy_budget=args.accuracy_budget,
        objective=args.objective,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        out=args.out,
        overwrite=args.overwrite,
        max_batch=args.max_batch,
        threads=args.threads,
        store=args.store,
    )
    m = export_run(opts)
    where = f"{m.model}:{m.version}" if m.version else (args.out or f"{args.run_dir}/package")
    print(f"exported {where}: shipped {', '.join(m.shipped)}; default {m.default_variant}")
    print(f"  {m.default_reason}")
    print("\n".join(summary_lines(m)))
    return 0


def main(argv: list[str] | None = None) -> int:
    from nnship.runner import run_guarded

    p = argparse.ArgumentParser(
        prog="nnship export", description="Export a run to an ONNX model package."
    )
    add_arguments(p)
    return run_guarded(run, p.parse_args(argv))
