"""End-to-end speed and memory of `nnship predict` against in-process ONNX Runtime on the same rows.

    python -m nnship.batch.benchmark [--report reports/batch-benchmark.md] [--rows-scale 1.0]

Trains and exports (fp32, no store) an MLP (breast-cancer), a CNN (digits) and an LSTM
(digits-seq), writes Parquet files of rows drawn inside each training range (1x and 10x), then runs
each job as its own `nnship predict` process, sampling its resident memory with psutil, and the
same rows preloaded in memory through the same runtime (variant, threads, batch size) in another.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from nnship.io import atomic_write

log = logging.getLogger(__name__)

# family, data set, rows at 1x (the 10x file holds ten times as many)
FAMILIES = [
    ("mlp", "breast-cancer", 200_000),
    ("cnn", "digits", 40_000),
    ("lstm", "digits-seq", 20_000),
]
RATIO_BAR = 0.85
THREADS, BATCH = 1, 1024
REPEATS = 2


def build_package(model: str, dataset: str, work: Path) -> Path:
    """A short training run exported as fp32 only (the same variant for both measurements)."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.training.train import TrainConfig, train

    run = work / f"{model}-{dataset}"
    train(TrainConfig(model=model, dataset=dataset, epochs=3, out=str(run)))
    export_run(ExportOptions(str(run), variants=("fp32",), store=False, bench_seconds=0.05))
    return run / "package"


def write_rows(package: Path, path: Path, n: int, seed: int = 0) -> None:
    """n rows inside the training range, as the package's flat feature columns, in row groups."""
    from nnship.batch.rows import column_names
    from nnship.package import load_package

    m = load_package(package, variants=[]).manifest
    names = column_names(m)
    stats = m.input.stats
    rng = np.random.default_rng(seed)
    writer = None
    step = 20_000  # rows per row group, the same in the 1x and 10x files
    for start in range(0, n, step):
        k = min(step, n - start)
        cols = {
            name: rng.uniform(stats[j % len(stats)].min, stats[j % len(stats)].max, k)
            for j, name in enumerate(names)
        }
        table = pa.table({"id": np.arange(start, start + k), **cols})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def peak_rss(cmd: list[str]) -> tuple[str, int]:
    """Run a command, sampling its resident memory every 10 ms; (stdout, peak bytes)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return out, peak


def run_job(package: Path, rows: Path, out: Path, engine: str = "local") -> dict:
    """One `nnship predict` process; its summary with its peak RSS (the output is removed)."""
    cmd = [sys.executable, "-m", "nnship.cli", "predict", str(package), "--input", str(rows)]
    cmd += ["--output", str(out), "--keep", "id", "--threads", str(THREADS), "--engine", engine]
    cmd += ["--batch-size", str(BATCH), "--variant", "fp32"]
    stdout, peak = peak_rss(cmd)
    out.unlink()
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary.pop("output")  # a temporary path
    return {**summary, "peak_rss_mb": round(peak / 2**20, 1)}


def best(runs: list[dict]) -> dict:
    """The fastest of repeated runs (the machine may be shared), with the highest peak RSS seen."""
    top = max(runs, key=lambda r: r["rows_per_s"])
    return {**top, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "repeats": len(runs)}


def ray_installed() -> bool:
    """Whether the optional Ray extra is there (its figures are left out otherwise)."""
    return importlib.util.find_spec("ray") is not None


def in_memory(package: str, rows: str) -> dict:
    """In-process ONNX Runtime on the rows preloaded as one float32 array: the inference loop alone."""
    from nnship.batch.engine import open_runtime
    from nnship.batch.rows import column_names

    rt = open_runtime(package, "fp32", THREADS)
    m = rt.manifest
    table = pq.read_table(rows, columns=column_names(m))
    x = np.stack([c.to_numpy() for c in table.columns], axis=1).astype(np.float32)
    x = x.reshape(len(x), *m.input.shape)
    rt.run(x[:BATCH])  # first-call set-up outside the timing, as a warmed-up service has
    began = time.perf_counter()
    for i in range(0, len(x), BATCH):
        rt.run(x[i : i + BATCH])
    wall = time.perf_counter() - began
    return {"rows": len(x), "wall_s": round(wall, 3), "rows_per_s": round(len(x) / wall, 1)}


def run_in_memory(package: Path, rows: Path) -> dict:
    """The in-memory measurement in a process of its own, with its peak RSS."""
    cmd = [sys.executable, "-m", "nnship.batch.benchmark", "--in-memory", str(package), str(rows)]
    stdout, peak = peak_rss(cmd)
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mb": round(peak / 2**20, 1)}


def _ray_cell(result: dict) -> str:
    """The Ray figure of a row, where there is one."""
    ray = result.get("ray")
    if ray is None:
        return "–"
    return f"{ray['rows_per_s']:,.0f} (driver {ray['peak_rss_mb']} MB)"


def render(results: list[dict]) -> str:
    """The report as Markdown."""
    lines = [
        "# Batch inference: `nnship predict` against in-process ONNX Runtime",
        "",
        f"Same package (fp32), {THREADS} intra-op thread, batch size {BATCH}; the job reads Parquet, "
        "validates, infers and writes Parquet (kept `id`, prediction, probabilities, range flags), "
        "its rows/s counted from its first read to its output in place (the summary's `rows_per_s`; "
        "start-up, i.e. package verification and session creation, is `startup_s`, shown apart); the "
        "baseline runs the same rows already in memory as one float32 array through the same runtime, "
        "timing the inference loop alone (after one warm-up call). Each run is its own process; peak "
        f"RSS sampled with psutil every 10 ms. Each figure is the best of {REPEATS} interleaved runs "
        "(the machine may be shared with other work); the Ray column is one run of `--engine ray` "
        "on a local Ray that the job starts (its start-up counted in its rows/s), with the driver's "
        "peak RSS (the actors are processes of their own).",
        "",
        "| model | rows | job rows/s | in-memory ORT rows/s | ratio | bar | job start-up s "
        "| job peak RSS MB | in-memory peak RSS MB | `--engine ray` rows/s |",
        "| --- " * 10 + "|",
    ]
    for r in results:
        for scale in ("1x", "10x"):
            job, mem = r[scale]["job"], r[scale]["in_memory"]
            ratio = job["rows_per_s"] / mem["rows_per_s"]
            lines.append(
                f"| {r['model']} ({r['dataset']}) | {job['rows']:,} ({scale}) | {job['rows_per_s']:,.0f} "
                f"| {mem['rows_per_s']:,.0f} | {ratio:.2f} | {'met' if ratio >= RATIO_BAR else 'missed'} "
                f"(≥ {RATIO_BAR}) | {job['startup_s']} | {job['peak_rss_mb']} | {mem['peak_rss_mb']} "
                f"| {_ray_cell(r[scale])} |"
            )
    lines += ["", "Per row, at 10x the rows, and the job's memory from 1x to 10x:", ""]
    for r in results:
        job, mem = r["10x"]["job"], r["10x"]["in_memory"]
        infer, whole = 1e6 / mem["rows_per_s"], 1e6 / job["rows_per_s"]
        rss1, rss10 = r["1x"]["job"]["peak_rss_mb"], job["peak_rss_mb"]
        lines.append(
            f"- {r['model']}: inference alone {infer:.2f} µs, the whole job {whole:.2f} µs (what "
            f"reading, checking and writing add where they do not overlap inference: "
            f"{whole - infer:.2f} µs); peak RSS {rss1} MB at 1x ({r['1x']['job']['parts']} parts), "
            f"{rss10} MB at 10x ({job['parts']} parts) ({(rss10 / rss1 - 1) * 100:+.0f}%)."
        )
    lines += [
        "",
        "A job holds at most about five parts at once (two read ahead, one in inference, two "
        "waiting for the writer), whatever the input's size: a file of fewer parts than that stays "
        "below the plateau, so the growth from 1x to 10x is largest where the 1x file holds fewest.",
    ]
    lines += [
        "",
        f"Machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the packages, measure, write the report."""
    p = argparse.ArgumentParser(
        prog="python -m nnship.batch.benchmark", description=__doc__.splitlines()[0]
    )
    p.add_argument("--report", type=Path, default=Path("reports/batch-benchmark.md"))
    p.add_argument(
        "--rows-scale", type=float, default=1.0, help="scale the row counts (quick runs)"
    )
    p.add_argument("--in-memory", nargs=2, metavar=("PACKAGE", "ROWS"), help=argparse.SUPPRESS)
    p.add_argument("--from-json", type=Path, help="only render the report from saved figures")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.in_memory:
        print(json.dumps(in_memory(*args.in_memory)))
        return 0
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        atomic_write(args.report, lambda t: t.write_text(render(results)))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="nnship-batch-bench-") as tmp:
        work = Path(tmp)
        for model, dataset, n in FAMILIES:
            package = build_package(model, dataset, work)
            entry: dict = {"model": model, "dataset": dataset}
            for scale, k in (("1x", 1), ("10x", 10)):
                rows = work / f"{model}-{scale}.parquet"
                write_rows(package, rows, int(n * k * args.rows_scale))
                out = work / f"{model}-{scale}-out.parquet"
                jobs, mems = [], []
                for _ in range(REPEATS):  # interleaved, so both see the same machine load
                    jobs.append(run_job(package, rows, out))
                    mems.append(run_in_memory(package, rows))
                entry[scale] = {"job": best(jobs), "in_memory": best(mems)}
                if scale == "10x" and ray_installed():
                    entry[scale]["ray"] = run_job(package, rows, out, engine="ray")
                rows.unlink()
                print(json.dumps({"model": model, "scale": scale, **entry[scale]}), flush=True)
            results.append(entry)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.report, lambda t: t.write_text(render(results)))
    json_path = args.report.with_suffix(".json")
    atomic_write(json_path, lambda t: t.write_text(json.dumps(results, indent=2) + "\n"))
    print(args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
