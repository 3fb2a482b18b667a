"""A batch job: input files -> validated blocks -> ONNX Runtime -> output parts in a hidden staging
folder beside the output, with a job record and a log of completed parts; `--resume` continues a
killed job from its last completed part, and the output appears only when complete."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nnship.batch import sinks
from nnship.batch.engine import CPU_BATCH, GPU_BATCH, Engine, open_runtime, output_names
from nnship.batch.pipeline import (
    Consumer,
    Prefetch,
    Workers,
    default_workers,
    ordered,
    worker_pool,
)
from nnship.batch.rows import (
    Checked,
    Reject,
    check_array,
    check_columns,
    check_nested,
    check_records,
    column_names,
)
from nnship.batch.sources import Block, Spec, input_files, read_blocks, total_rows
from nnship.errors import NnshipError
from nnship.io import atomic_write, atomic_write_json, sha256_file
from nnship.service.validation import Validator

log = logging.getLogger(__name__)

JOB_FORMAT = "nnship.batch-job/1"
JOB, LOG, PARTS, REJECTS = "job.json", "parts.log", "parts", "rejects"
PART_ROWS = 16384


@dataclass
class Options:
    """Everything `nnship predict` takes."""

    package: str
    input: str
    output: Path
    engine: str = "local"
    batch_size: int = 0  # 0: 1024 on the CPU, 8192 on a GPU
    variant: str = "auto"
    keep: list[str] = field(default_factory=list)
    rejects: Path | None = None
    max_reject_fraction: float = 1.0
    resume: bool = False
    threads: int = 0  # 0: all cores
    workers: int = 0  # 0: the cores inference leaves (pipeline.default_workers)
    part_rows: int = PART_ROWS
    format: str | None = None
    overwrite: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal


@dataclass
class Summary:
    """The figures a job ends with (printed as one JSON line)."""

    rows: int = 0
    predicted: int = 0
    rejects: int = 0
    rows_per_s: float = 0.0  # from the first read to the output in place
    wall_s: float = 0.0
    startup_s: float = 0.0  # package verification, session creation, staging
    variant: str = ""
    provider: str = ""
    batch_size: int = 0
    parts: int = 0
    resumed_parts: int = 0
    workers: int = 0
    output: str = ""

    def add(self, entry: dict[str, Any]) -> None:
        """Count one part."""
        self.rows += entry["rows"]
        self.predicted += entry["predicted"]
        self.rejects += entry["rejects"]
        self.parts += 1


def staging_dir(output: Path) -> Path:
    """The hidden folder beside the output where a job builds it."""
    return output.parent / f".{output.name}.nnship-job"


def _check_options(o: Options) -> None:
    """Each number in its range, refused in one line naming the flag."""
    if o.batch_size < 0:
        raise NnshipError(f"--batch-size {o.batch_size}: must be at least 1 (0: the default)")
    if o.part_rows < 1:
        raise NnshipError(f"--part-rows {o.part_rows}: must be at least 1")
    if not 0.0 <= o.max_reject_fraction <= 1.0 or math.isnan(o.max_reject_fraction):
        raise NnshipError(f"--max-reject-fraction {o.max_reject_fraction}: must be in [0, 1]")
    if o.threads < 0:
        raise NnshipError(f"--threads {o.threads}: must be 0 (all cores) or more")
    if not 0 <= o.workers <= 64:
        raise NnshipError(f"--workers {o.workers}: must be in [0, 64] (0: the cores left over)")
    if o.engine not in ("local", "ray"):
        raise NnshipError(f"--engine {o.engine}: local or ray")


def _fingerprint(o: Options, files: list[Path], runtime: Any, batch_size: int, fmt: str) -> dict:
    """What makes a job's output what it is: a resumed job must match it exactly."""
    m = runtime.manifest
    return {
        "format": JOB_FORMAT,
        "package": {
            "model": m.model,
            "version": m.version,
            "manifest_sha256": sha256_file(runtime.package.path / "manifest.json"),
            "variant": runtime.variant,
            "variant_sha256": runtime.sha256,
            "provider": runtime.provider,
        },
        "inputs": [
            {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
            for p in files
        ],
        "options": {
            "batch_size": batch_size,
            "part_rows": o.part_rows,
            "keep": o.keep,
            "format": fmt,
            "output": str(o.output.resolve()),
            "rejects": str(o.rejects.resolve()) if o.rejects else None,
        },
    }


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between a job's record and the job now asked for, in words."""
    keys = [("package", "the package or variant"), ("inputs", "the input files"), ("options", "")]
    out = []
    for key, what in keys:
        if old.get(key) != new.get(key):
            if key == "options":
                changed = [k for k in new[key] if old.get(key, {}).get(k) != new[key][k]]
                out.append("options " + ", ".join(changed))
            else:
                out.append(what)
    return out


def _read_log(stage: Path) -> dict[str, dict[str, Any]]:
    """The completed parts, in the order they were written, up to the first torn line or damaged
    part (from there on, parts are redone)."""
    done: dict[str, dict[str, Any]] = {}
    path = stage / LOG
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            break
        part = stage / PARTS / entry["file"]
        if not part.is_file() or sha256_file(part) != entry["sha256"]:
            break
        done[entry["part"]] = entry
    return done


def part_key(file_index: int, block_index: int) -> str:
    """A part's name: its input file's and its block's numbers (sorted, they give the row order)."""
    return f"{file_index:05d}-{block_index:05d}"


def store_part(
    stage: Path,
    key: str,
    table: pa.Table,
    rejects: list[dict[str, Any]],
    rows: int,
    fmt: str,
    header: bool,
) -> dict[str, Any]:
    """A part and its rejects written into the staging folder; its entry for the job's log."""
    name = f"part-{key}{sinks.EXTENSION[fmt]}"
    digest = sinks.write_table(table, stage / PARTS / name, fmt, header=header)
    rname = f"rejects-{key}.jsonl"
    sinks.write_rejects(rejects, stage / REJECTS / rname)
    return {
        "part": key,
        "file": name,
        "sha256": digest,
        "rejects_file": rname,
        "rows": rows,
        "predicted": table.num_rows,
        "rejects": len(rejects),
        "columns": table.column_names,
    }


def process(
    block: Block, checked: Checked, engine: Engine
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """A checked block's output rows and its rejects."""
    return finish(block, checked, engine.logits(checked), engine.flags(checked), engine)


def finish(
    block: Block, checked: Checked, logits: np.ndarray, flags: np.ndarray | None, engine: Engine
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The output rows of a block whose logits and range flags are known, and its rejects."""
    table = engine.table(_kept(block, checked.valid), logits, flags)
    return table, [r.record() for r in checked.rejects]


def _prepare(stage: Path, fingerprint: dict, resume: bool) -> dict[str, dict[str, Any]]:
    """The staging folder: continued when resuming the same job, else started afresh."""
    job = stage / JOB
    if stage.exists():
        try:
            old = json.loads(job.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or old.get("format") != JOB_FORMAT:
            raise NnshipError(f"{stage} exists and is not an nnship job's staging folder")
        if resume:
            changed = _differences(old, fingerprint)
            if changed:
                raise NnshipError(
                    f"--resume: {', '.join(changed)} changed since the job began; "
                    "run without --resume to start afresh"
                )
            done = _read_log(stage)
            log.info("resuming: %d completed parts kept", len(done))
            return done
        log.info("an unfinished job's staging folder is replaced (use --resume to continue it)")
        shutil.rmtree(stage)
    elif resume:
        log.info("--resume: no unfinished job for this output; starting afresh")
    (stage / PARTS).mkdir(parents=True)
    (stage / REJECTS).mkdir()
    atomic_write_json(job, fingerprint)
    return {}


def _kept(block: Block, valid: np.ndarray) -> dict[str, pa.Array]:
    """The --keep columns of a block's valid rows."""
    out = {}
    for name, col in block.keep.items():
        try:
            array = col if isinstance(col, pa.Array | pa.ChunkedArray) else pa.array(col)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise NnshipError(f"{block.file}: --keep {name}: values of mixed types ({e})") from e
        if len(valid) < len(array):
            array = array.take(pa.array(valid, type=pa.int64()))
        # one chunk, however the block was read: the part's bytes depend on the values alone
        out[name] = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    return out


def check_block(block: Block, spec: Spec, validator: Validator) -> Checked:
    """A block's valid rows and rejects, by the kind of rows it holds."""
    file = str(block.file)
    if block.kind == "columns":
        return check_columns(block.features, spec.columns, spec.shape, file, block.numbers)
    if block.kind == "records":
        return check_records(block.features, spec.columns, spec.shape, file, block.numbers)
    if block.kind == "arrays":
        return check_nested(block.features, validator, file, block.numbers)
    checked = check_array(block.features, file, block.numbers)
    seq = block.features.shape[1] if spec.sequence else 0
    if seq and not 1 <= seq <= validator.max_seq:
        rule = f"sequence length {seq} is outside [1, {validator.max_seq}]"
        return _all_rejected(block, "sequence_length", rule)
    return checked


def _all_rejected(block: Block, rule: str, message: str) -> Checked:
    """Every row of a block rejected by one rule."""
    rejects = [Reject(str(block.file), int(n), "input", rule, message) for n in block.numbers]
    return Checked(block.rows, np.zeros(0, dtype=np.int64), [], rejects)


def _progress(enabled: bool | None) -> Progress:
    """A bar of rows, rows/s and time left, drawn only on a terminal unless told otherwise."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return Progress(
        TextColumn("[bold]predict"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        disable=not show,
        transient=False,
    )


def _finish(o: Options, stage: Path, entries: list[dict[str, Any]], joined: Any) -> None:
    """The rejects file, then the output, renamed into place complete; the staging folder goes."""
    if o.rejects is not None:
        files = [stage / REJECTS / e["rejects_file"] for e in entries]
        atomic_write(o.rejects, lambda tmp: sinks.concatenate(files, tmp))
    built = joined.close() if joined is not None else stage / PARTS
    if o.output.is_dir() and not o.output.is_symlink():
        os.replace(o.output, stage / "replaced")
    os.replace(built, o.output)
    shutil.rmtree(stage)


@dataclass
class _Job:
    """A job set up: its inputs, package runtime, checks and staging folder."""

    options: Options
    files: list[Path]
    fmt: str
    part_fmt: str  # the staging parts' format
    spec: Spec
    validator: Validator
    engine: Engine
    stage: Path
    done: dict[str, dict[str, Any]]
    joined: sinks.Joined | None
    summary: Summary
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)


def _setup(o: Options) -> _Job:
    """Check the options and inputs, load the package, prepare (or continue) the staging folder."""
    _check_options(o)
    files = input_files(o.input)
    fmt, single = sinks.output_format(o.output, o.format)
    if (o.output.exists() or o.output.is_symlink()) and not o.overwrite:
        raise NnshipError(f"{o.output} already exists; pass --overwrite to replace it")
    if o.engine == "ray":
        from nnship.batch.ray_engine import require_ray

        require_ray()
        if o.resume:
            raise NnshipError("--resume continues local jobs; run the Ray job again without it")
    runtime = open_runtime(o.package, o.variant, o.threads)
    m = runtime.manifest
    batch_size = o.batch_size or (GPU_BATCH if runtime.on_gpu else CPU_BATCH)
    validator = Validator(m, max_rows=1)
    spec = Spec(column_names(m), tuple(m.input.shape), m.takes_sequences, list(o.keep))
    clash = sorted(set(o.keep) & set(output_names(runtime)))
    if clash:
        raise NnshipError(f"--keep {clash[0]}: the output has a column of that name")
    stage = staging_dir(o.output)
    done = _prepare(stage, _fingerprint(o, files, runtime, batch_size, fmt), o.resume)
    summary = Summary(
        variant=runtime.variant,
        provider=runtime.provider,
        batch_size=batch_size,
        output=str(o.output),
        resumed_parts=len(done),
    )
    # a single output file grows part by part beside the parts (a resumed job first re-adds its own)
    joined = sinks.Joined(stage / f"output{sinks.EXTENSION[fmt]}", fmt) if single else None
    for key in done if joined else ():
        joined.add(stage / PARTS / done[key]["file"], done[key]["columns"])
    engine = Engine(runtime, batch_size, validator)
    part_fmt = sinks.part_format(fmt, single)
    return _Job(
        o, files, fmt, part_fmt, spec, validator, engine, stage, done, joined, summary, dict(done)
    )


def predict(o: Options) -> Summary:
    """Run a batch job to completion (or continue it with o.resume) and return its summary."""
    began = time.perf_counter()
    job = _setup(o)
    started = time.perf_counter()
    job.summary.startup_s = round(started - began, 3)
    if o.engine == "ray":
        _run_ray(job)
    else:
        _run_local(job, started)
    if not job.entries:
        raise NnshipError(f"{o.input}: the input holds no rows")
    _finish(o, job.stage, [job.entries[k] for k in sorted(job.entries)], job.joined)
    ended = time.perf_counter()
    summary = job.summary
    summary.wall_s = round(ended - began, 3)
    summary.rows_per_s = round(summary.rows / max(ended - started, 1e-9), 1)
    log.info(
        "predicted %d rows (%d rejected) into %s", summary.predicted, summary.rejects, o.output
    )
    return summary


def _run_local(job: _Job, started: float) -> None:
    """The local engine: a reader thread, inference on this one, a writer thread; with more than
    one worker, those two threads hand each part's decoding, checks, output columns and file to a
    pool, and keep the parts in order."""
    o, stage, done, summary = job.options, job.stage, job.done, job.summary
    workers = o.workers or default_workers(o.threads)
    summary.workers = workers
    totals = [total_rows(f) for f in job.files]
    total = None if None in totals else sum(totals)
    with (
        _progress(o.progress) as bar,
        open(stage / LOG, "a") as journal,
        _pool(workers) as pool,
    ):
        task = bar.add_task("predict", total=total, rate="")

        def build(item: tuple[str, Block, Checked, np.ndarray, np.ndarray | None]) -> tuple:
            key, block, checked, logits, flags = item
            table, rejects = finish(block, checked, logits, flags, job.engine)
            header = job.joined is None
            entry = store_part(stage, key, table, rejects, checked.rows, job.part_fmt, header)
            return entry, table

        def record(built: tuple[dict[str, Any], pa.Table]) -> None:
            entry, table = built
            if job.joined is not None:
                job.joined.add(stage / PARTS / entry["file"], table.column_names, table)
            journal.write(json.dumps(entry) + "\n")
            journal.flush()
            job.entries[entry["part"]] = entry
            bar.advance(task, entry["rows"])
            elapsed = time.perf_counter() - started
            bar.update(task, rate=f"{bar.tasks[0].completed / max(elapsed, 1e-9):,.0f} rows/s")

        def check(item: tuple[str, Block]) -> tuple[str, Block, Checked | None, Any]:
            key, block = item
            if key in done:
                return key, block, None, None
            checked = check_block(block, job.spec, job.validator)
            return key, block, checked, job.engine.flags(checked)

        def blocks() -> Iterator[tuple[str, Block]]:
            for fi, f in enumerate(job.files):
                for bi, block in enumerate(read_blocks(f, job.spec, o.part_rows, pool)):
                    yield part_key(fi, bi), block

        # this thread runs inference alone (ONNX Runtime releases the GIL); reading, checking and
        # range flags happen on the reader thread, output columns and files on the writer thread,
        # or on the pool's workers in their stead
        if pool is None:
            checked_blocks = map(check, blocks())
            writer = Consumer(lambda item: record(build(item)))
            submit = lambda item: item  # noqa: E731
        else:
            checked_blocks = ordered(pool, check, blocks())
            writer = Consumer(lambda future: record(future.result()), depth=pool.ahead)
            submit = lambda item: pool.submit(build, item)  # noqa: E731
        try:
            with Prefetch(checked_blocks) as items:
                for key, block, checked, flags in items:
                    if checked is None:
                        summary.add(done[key])
                        bar.advance(task, done[key]["rows"])
                        continue
                    entry = {"rows": checked.rows, "predicted": len(checked.valid)}
                    summary.add({**entry, "rejects": len(checked.rejects)})
                    _check_rejects(o, summary, checked.rejects[:1])
                    writer.put(submit((key, block, checked, job.engine.logits(checked), flags)))
        finally:
            writer.close()


@contextmanager
def _pool(workers: int) -> Iterator[Workers | None]:
    """The workers' pool for a job (None for one worker), shut down when the job ends."""
    pool = worker_pool(workers)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(job: _Job) -> None:
    """The Ray Data engine: parts written by actors, then joined here in row order."""
    from nnship.batch import ray_engine

    o, runtime = job.options, job.engine.runtime
    spec = {
        "package": str(runtime.package.path),
        "variant": runtime.variant,
        "threads": o.threads or 1,
        "batch_size": job.engine.batch_size,
        "spec": job.spec,
        "part_rows": o.part_rows,
        "stage": str(job.stage),
        "fmt": job.part_fmt,
        "header": job.joined is None,
    }
    for entry in ray_engine.run(spec, job.files, actors=0):
        job.entries[entry["part"]] = entry
        job.summary.add(entry)
        first = (job.stage / REJECTS / entry["rejects_file"]).read_text().split("\n", 1)[0]
        _check_rejects(o, job.summary, [Reject(**json.loads(first))] if first else [])
    for key in sorted(job.entries) if job.joined else ():
        job.joined.add(job.stage / PARTS / job.entries[key]["file"], job.entries[key]["columns"])


def _check_rejects(o: Options, summary: Summary, latest: list[Reject]) -> None:
    """Stop once the rejected fraction of the rows so far passes --max-reject-fraction, quoting
    the latest part's first reject."""
    if not summary.rows or summary.rejects / summary.rows <= o.max_reject_fraction:
        return
    quoted = "".join(
        f"; e.g. {r.file} row {r.row}: {r.field}: {r.message} ({r.rule})" for r in latest[:1]
    )
    raise NnshipError(
        f"{summary.rejects} of {summary.rows} rows rejected ({summary.rejects / summary.rows:.1%}), "
        f"more than --max-reject-fraction {o.max_reject_fraction}{quoted}"
    )


def summary_line(summary: Summary) -> str:
    """The summary as one JSON line."""
    return json.dumps(asdict(summary))
