"""`nnship predict`: a file, folder or glob of rows -> a file or folder of predictions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnship.batch.job import PART_ROWS, Options, predict, summary_line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `nnship predict`."""
    p.add_argument(
        "package", metavar="MODEL[:VERSION]|PACKAGE_DIR", help="store tag or package folder"
    )
    p.add_argument(
        "--input",
        required=True,
        metavar="FILE|DIR|GLOB",
        help="Parquet, CSV, JSON Lines, NPY or NPZ files",
    )
    p.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="FILE|DIR",
        help="a .parquet/.csv/.jsonl file, or a folder of parts",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: Ray Data (pip install 'nnship[ray]')",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=0,
        metavar="N",
        help="rows per inference call (default: 1024 on the CPU, 8192 on a GPU)",
    )
    p.add_argument(
        "--variant",
        default="auto",
        metavar="auto|NAME",
        help="auto: the package's default (its GPU variant on CUDA), or a variant name",
    )
    p.add_argument(
        "--keep",
        nargs="+",
        action="extend",
        default=[],
        metavar="COL",
        help="input columns copied to the output unchanged",
    )
    p.add_argument(
        "--rejects",
        type=Path,
        metavar="FILE",
        help="JSON Lines file of the rejected rows (file, row, field, rule, message)",
    )
    p.add_argument(
        "--max-reject-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="stop once more than this fraction of the rows so far is rejected",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue a killed job from its last completed part"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="ONNX Runtime intra-op threads (0: all cores)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="threads beside inference that decode Parquet row groups, check rows and write parts "
        "(0: the cores --threads leaves, at least 1, at most 8)",
    )
    p.add_argument(
        "--part-rows",
        type=int,
        default=PART_ROWS,
        metavar="N",
        help="rows per output part: the unit of progress and of --resume",
    )
    p.add_argument(
        "--format",
        choices=("parquet", "csv", "jsonl"),
        help="format of the parts when --output is a folder (default parquet)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Run the job; its summary is the one line on stdout."""
    options = Options(
        package=args.package,
        input=args.input,
        output=args.output,
        engine=args.engine,
        batch_size=args.batch_size,
        variant=args.variant,
        keep=args.keep,
        rejects=args.rejects,
        max_reject_fraction=args.max_reject_fraction,
        resume=args.resume,
        threads=args.threads,
        workers=args.workers,
        part_rows=args.part_rows,
        format=args.format,
        overwrite=args.overwrite,
    )
    print(summary_line(predict(options)), file=sys.stdout, flush=True)
    return 0
