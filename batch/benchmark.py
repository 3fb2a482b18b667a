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
import math
import os
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

# family, data set, rows at 1x (the 10x file holds ten times as many), rows per part: the 1x file
# holds at least ten parts, more than a job holds at once, so that its memory is at its plateau
FAMILIES = [
    ("mlp", "breast-cancer", 200_000, 16384),
    ("cnn", "digits", 40_000, 4096),
    ("lstm", "digits-seq", 20_000, 2048),
]
STAGE_PARTS = 24  # parts timed stage by stage
RATIO_BAR = 0.85
THREADS, BATCH = 1, 1024
REPEATS = 3


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


def run_job(package: Path, rows: Path, out: Path, part_rows: int, engine: str = "local") -> dict:
    """One `nnship predict` process; its summary with its peak RSS (the output is removed)."""
    cmd = [sys.executable, "-m", "nnship.cli", "predict", str(package), "--input", str(rows)]
    cmd += ["--output", str(out), "--keep", "id", "--threads", str(THREADS), "--engine", engine]
    cmd += ["--batch-size", str(BATCH), "--variant", "fp32", "--part-rows", str(part_rows)]
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


def stages(package: str, rows: str, part_rows: str) -> dict:
    """CPU time per row (all threads, µs) of each stage of a job run one stage after the other on
    this thread, over the first STAGE_PARTS parts: what each costs before any overlap."""
    from nnship.batch import job, sinks
    from nnship.batch.engine import Engine, open_runtime
    from nnship.batch.rows import column_names
    from nnship.batch.sources import Spec, read_blocks
    from nnship.service.validation import Validator

    rt = open_runtime(package, "fp32", THREADS)
    m = rt.manifest
    validator = Validator(m, max_rows=1)
    spec = Spec(column_names(m), tuple(m.input.shape), m.takes_sequences, ["id"])
    engine = Engine(rt, BATCH, validator)
    spent = dict.fromkeys(("read", "check", "infer", "table", "write"), 0.0)

    def timed(stage: str, f, *args):
        began = time.process_time()
        out = f(*args)
        spent[stage] += time.process_time() - began
        return out

    n = 0
    with tempfile.TemporaryDirectory(prefix="nnship-stages-") as tmp:
        stage = Path(tmp)
        (stage / job.PARTS).mkdir()
        (stage / job.REJECTS).mkdir()
        joined = sinks.Joined(stage / "output.parquet", "parquet")
        blocks = read_blocks(Path(rows), spec, int(part_rows))
        for i in range(STAGE_PARTS):
            block = timed("read", next, blocks, None)
            if block is None:
                break
            checked = timed("check", job.check_block, block, spec, validator)
            flags = timed("check", engine.flags, checked)
            logits = timed("infer", engine.logits, checked)
            table, rejects = timed("table", job.finish, block, checked, logits, flags, engine)
            args = (stage, f"{i:05d}", table, rejects, checked.rows, "arrow", False)
            entry = timed("write", job.store_part, *args)
            part = stage / job.PARTS / entry["file"]
            timed("write", joined.add, part, table.column_names, table)
            n += checked.rows
        joined.close()
    return {k: round(v / n * 1e6, 3) for k, v in spent.items()}


def reading(package: str, rows: str, part_rows: str) -> dict:
    """Rows/s of the reader side alone (Parquet decoding, the checks and range flags, in order) over
    the whole file, on one worker (the reader thread) and on a pool of as many workers as cores:
    how the stages that bound a cheap model's job scale with the cores given to them."""
    from nnship.batch import job
    from nnship.batch.engine import Engine, open_runtime
    from nnship.batch.pipeline import ordered, worker_pool
    from nnship.batch.rows import column_names
    from nnship.batch.sources import Spec, read_blocks
    from nnship.cpus import usable_cores
    from nnship.service.validation import Validator

    rt = open_runtime(package, "fp32", THREADS)
    m = rt.manifest
    validator = Validator(m, max_rows=1)
    spec = Spec(column_names(m), tuple(m.input.shape), m.takes_sequences, ["id"])
    engine = Engine(rt, BATCH, validator)

    def check(block):
        checked = job.check_block(block, spec, validator)
        return checked.rows, engine.flags(checked)

    out = {}
    for workers in sorted({1, usable_cores()}):
        pool = worker_pool(workers)
        began, n = time.perf_counter(), 0
        blocks = read_blocks(Path(rows), spec, int(part_rows), pool)
        for count, _ in ordered(pool, check, blocks) if pool else map(check, blocks):
            n += count
        out[str(workers)] = round(n / (time.perf_counter() - began), 1)
        if pool:
            pool.shutdown()
    return out


def run_reading(package: Path, rows: Path, part_rows: int) -> dict:
    """The reader side's rows/s by workers, in a process of its own."""
    cmd = [sys.executable, "-m", "nnship.batch.benchmark", "--reading", str(package), str(rows)]
    stdout, _ = peak_rss([*cmd, str(part_rows)])
    return json.loads(stdout.strip().splitlines()[-1])


def run_stages(package: Path, rows: Path, part_rows: int) -> dict:
    """The stage timings in a process of their own."""
    cmd = [sys.executable, "-m", "nnship.batch.benchmark", "--stages", str(package), str(rows)]
    stdout, _ = peak_rss([*cmd, str(part_rows)])
    return json.loads(stdout.strip().splitlines()[-1])


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


def _workers(results: list[dict]) -> str:
    """The jobs' worker counts, as their summaries give them."""
    seen = sorted({r[k]["job"].get("workers", 1) for r in results for k in ("1x", "10x")})
    return ", ".join(map(str, seen))


def render(results: list[dict]) -> str:
    """The report as Markdown."""
    lines = [
        "# Batch inference: `nnship predict` against in-process ONNX Runtime",
        "",
        f"Same package (fp32), {THREADS} intra-op thread, batch size {BATCH}; the job runs with its "
        f"default `--workers` ({_workers(results)}: the cores its inference thread leaves, at least "
        "1); it reads Parquet, "
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
            f"{whole - infer:.2f} µs); peak RSS {rss1} MB at 1x ({r['1x']['job']['parts']} parts "
            f"of {r['part_rows']:,} rows), {rss10} MB at 10x ({job['parts']} parts) "
            f"({(rss10 / rss1 - 1) * 100:+.0f}%)."
        )
    lines += [
        "",
        "With one worker a job holds at most seven parts at once (two read ahead, one read and "
        "waiting for room, one in inference, two waiting for the writer, one being written); with N "
        "workers at most 2N + 6 (N + 1 being checked and N + 1 being written, beside the same "
        "four), plus N + 1 decoded Parquet row groups of at most 64 MiB each, whatever the input's "
        "size (seen: 7 with one worker, 22 with eight when writing is the slow stage); the 1x files "
        "hold ten parts or more, so both sizes run at that plateau and their peak RSS shows the "
        "memory flat in the input's size. Output Parquet: Snappy pages, dictionary pages for text "
        "only (labels, flagged feature names), plain pages for numbers, min/max statistics for "
        "kept non-float columns; "
        "the parts one output file is assembled from are staged as Arrow IPC files, so each row is "
        "encoded as Parquet once.",
    ]
    cores = psutil.cpu_count()
    lines += [
        "",
        "Where the time goes: CPU time per row (µs, all threads, `time.process_time`) of each "
        f"stage, run one after the other on the first {STAGE_PARTS} parts of the 10x file (read: "
        "Parquet decoding into Arrow; check: the service's rules and the float32 rows, range "
        "flags; infer: ONNX Runtime; table: probabilities, labels, out_of_range lists; write: the "
        "staging part, its sha256, the output's Parquet encoding). Inference takes one core "
        f"({THREADS} intra-op thread); all stages together share the machine's {cores} cores, so "
        "the job's rows/s can reach at most the in-memory figure times "
        f"min(1, {cores} × infer / all stages) (the bound column), however well they overlap.",
        "",
        "| model | read | check | infer | table | write | all stages | bound on the ratio |",
        "| --- " * 8 + "|",
    ]
    for r in results:
        st = r["stages"]
        total = sum(st.values())
        bound = min(1.0, cores * st["infer"] / total)
        cells = " | ".join(f"{st[k]:.3f}" for k in ("read", "check", "infer", "table", "write"))
        lines.append(f"| {r['model']} | {cells} | {total:.3f} | {bound:.2f} |")
    if all("reading" in r for r in results):
        counts = sorted({int(k) for r in results for k in r["reading"]})
        heads = " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in counts)
        lines += [
            "",
            "The reader side alone (Parquet decoding, the checks and range flags, in order; no "
            "inference) over the 10x file, in rows/s by `--workers` (1: the reader thread; more: "
            "row groups decoded and parts checked on a pool), and the cores a job would need for "
            f"the {RATIO_BAR} bar at the per-row costs above (the bound column's formula solved for "
            "the cores; arithmetic, not a measurement):",
            "",
            f"| model | {heads} | scaling | cores for the bar |",
            "| --- " * (len(counts) + 3) + "|",
        ]
        for r in results:
            st, rd = r["stages"], r["reading"]
            need = math.ceil(RATIO_BAR * sum(st.values()) / st["infer"])
            cells = " | ".join(f"{rd[str(w)]:,.0f}" for w in counts)
            gain = rd[str(counts[-1])] / rd[str(counts[0])]
            lines.append(f"| {r['model']} | {cells} | {gain:.2f}x | {need} |")
    for r in results:
        st = r["stages"]
        if cores * st["infer"] / sum(st.values()) < RATIO_BAR:
            rest = sum(st.values()) - st["infer"]
            lines += [
                "",
                f"The {RATIO_BAR} bar is out of reach for the {r['model']} on {cores} cores: its "
                f"inference costs {st['infer']:.3f} µs of CPU per row, while reading, checking and "
                f"writing the same row cost {rest:.3f} µs ({st['read']:.3f} µs of it decoding the "
                "Parquet input alone), so even with every stage overlapped the job is bound by the "
                "CPU the other stages need, not by inference. With `--workers` those stages spread "
                "over the cores inference leaves, so the bar needs a machine with the cores the "
                "table above gives.",
            ]
    if all("load" in r for r in results):
        loads = ", ".join(f"{r['model']} {r['load']}" for r in results)
        lines += ["", f"1-minute load average at the end of each model's runs: {loads}."]
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
    p.add_argument(
        "--stages", nargs=3, metavar=("PACKAGE", "ROWS", "PART_ROWS"), help=argparse.SUPPRESS
    )
    p.add_argument(
        "--reading", nargs=3, metavar=("PACKAGE", "ROWS", "PART_ROWS"), help=argparse.SUPPRESS
    )
    p.add_argument("--from-json", type=Path, help="only render the report from saved figures")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.in_memory:
        print(json.dumps(in_memory(*args.in_memory)))
        return 0
    if args.stages:
        print(json.dumps(stages(*args.stages)))
        return 0
    if args.reading:
        print(json.dumps(reading(*args.reading)))
        return 0
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        atomic_write(args.report, lambda t: t.write_text(render(results)))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="nnship-batch-bench-") as tmp:
        work = Path(tmp)
        for model, dataset, n, part_rows in FAMILIES:
            package = build_package(model, dataset, work)
            entry: dict = {"model": model, "dataset": dataset, "part_rows": part_rows}
            for scale, k in (("1x", 1), ("10x", 10)):
                rows = work / f"{model}-{scale}.parquet"
                write_rows(package, rows, int(n * k * args.rows_scale))
                out = work / f"{model}-{scale}-out.parquet"
                jobs, mems = [], []
                for _ in range(REPEATS):  # interleaved, so both see the same machine load
                    jobs.append(run_job(package, rows, out, part_rows))
                    mems.append(run_in_memory(package, rows))
                entry[scale] = {"job": best(jobs), "in_memory": best(mems)}
                if scale == "10x":
                    entry["stages"] = run_stages(package, rows, part_rows)
                    entry["reading"] = run_reading(package, rows, part_rows)
                if scale == "10x" and ray_installed():
                    entry[scale]["ray"] = run_job(package, rows, out, part_rows, engine="ray")
                rows.unlink()
                print(json.dumps({"model": model, "scale": scale, **entry[scale]}), flush=True)
            entry["load"] = round(os.getloadavg()[0], 2)  # other work sharing the machine
            results.append(entry)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.report, lambda t: t.write_text(render(results)))
    json_path = args.report.with_suffix(".json")
    atomic_write(json_path, lambda t: t.write_text(json.dumps(results, indent=2) + "\n"))
    print(args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
