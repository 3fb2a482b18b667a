"""Run directory -> verified, optimized model package -> BentoML model store."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnship.contracts import (
    MANIFEST,
    PACKAGE_FORMAT,
    Checkpoint,
    Manifest,
    as_json,
    parse,
    write_record,
)
from nnship.cpus import usable_cores
from nnship.errors import NnshipError
from nnship.export.bench import measure_rounds, ort_runner, torch_runner
from nnship.export.choose import DEFAULT_OBJECTIVE, OBJECTIVES, choose_default
from nnship.export.onnx_export import export_onnx
from nnship.export.parity import ParityError, check_parity, edge_batches, run_session, run_torch
from nnship.export.report import write_report
from nnship.export.variants import VARIANTS, build_variant
from nnship.io import plain_dir_mode, sha256_file, staged_dir
from nnship.models import RECURRENT, Network
from nnship.numeric import softmax
from nnship.onnxrt import CPU, batch_coupled_ops, cpu_session
from nnship.package import is_package
from nnship.training.checkpoint import META, load_checkpoint
from nnship.training.heldout import HeldOutRows, load_heldout
from nnship.training.metrics import evaluate_arrays
from nnship.training.progress import step_progress

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
GPU_ONLY = {"fp16": ["CUDAExecutionProvider"]}


@dataclass
class ExportOptions:
    run_dir: str
    name: str | None = None  # store name; default: the run directory's name
    accuracy_budget: float = 0.003  # largest test-metric loss against fp32 a default may have
    variants: tuple[str, ...] = VARIANTS
    out: str | None = None  # package directory; default RUN_DIR/package
    overwrite: bool = False  # replace an existing package at an explicit `out`
    max_batch: int = 1000  # largest batch the parity gate runs
    threads: int | None = None  # intra-op threads for every measurement; default: all cores
    store: bool = True  # import the package into the BentoML model store
    bench_batch: int = 128  # batch size of the throughput measurement: the service's max batch
    objective: str = DEFAULT_OBJECTIVE  # what the default variant is best at (export/choose.py)
    bench_seconds: float = 0.5  # minimum time spent on each latency and throughput measurement


def model_name(opts: ExportOptions) -> str:
    name = opts.name or Path(opts.run_dir).resolve().name.lower().replace("_", "-")
    if not NAME_RE.match(name):
        raise NnshipError(
            f"model name {name!r} is not valid: lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit, at most 64 characters"
        )
    return name


def check_variants(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise NnshipError(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    return tuple(["fp32", *[n for n in VARIANTS if n in names and n != "fp32"]])


def check_writable(directory: Path, what: str) -> None:
    """Fail early, before any work, when a directory cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".nnship-write-test-"):
            pass
    except OSError as e:
        raise NnshipError(f"{what} {directory} is not writable: {e.strerror or e}") from e


def check_out(out: Path, run_dir: Path, explicit: bool, overwrite: bool) -> bool:
    """Refuse an output folder that must not be replaced; returns whether one exists to replace.

    Only an nnship package is ever replaced: at an explicit --out only with --overwrite, at the
    default RUN/package always (it is derived from the run). The run, its parents and the BentoML
    model store never are."""
    target, run = out.resolve(), run_dir.resolve()
    if target == run or target in run.parents:
        raise NnshipError(f"--out {out} is the run directory or holds it; it is never replaced")
    if store_home().resolve() in [target, *target.parents]:
        raise NnshipError(f"--out {out} is inside the BentoML model store; choose another folder")
    if out.is_symlink():
        raise NnshipError(f"--out {out} is a symbolic link; it is never replaced")
    if not out.exists():
        return False
    if not is_package(out):
        raise NnshipError(
            f"--out {out} exists and is not an nnship model package; it is never replaced"
        )
    if explicit and not overwrite:
        raise NnshipError(f"--out {out} already exists; pass --overwrite to replace it")
    return True


def store_home() -> Path:
    """The model store's folder, found without importing bentoml (which fails on a bad home)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"


@dataclass
class Run:
    """A trained run as export reads it: the network, its checkpoint record and its held-out rows."""

    model: Network
    meta: Checkpoint
    rows: HeldOutRows


@dataclass
class Built:
    """The variants as they are built and measured: manifest entries and the live sessions."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, Any] = field(default_factory=dict)
    torch_out: np.ndarray | None = None  # PyTorch's outputs on the test rows


def load_run(run_dir: Path) -> Run:
    """The verified network and checkpoint record, and the verified rows the run keeps for export."""
    model, meta = load_checkpoint(run_dir)
    return Run(model, meta, load_heldout(run_dir, meta.heldout, run_dir / META))


def _metric(task: str, outputs: np.ndarray, y: np.ndarray) -> tuple[str, float, dict[str, float]]:
    """The headline test metric's key and value, and every test figure."""
    full = evaluate_arrays(task, outputs, y)
    key = "accuracy" if task == "classification" else "r2"
    return f"test_{key}", full[key], {f"test_{k}": v for k, v in full.items()}


def onnx_metadata(name: str, meta: Checkpoint) -> dict[str, Any]:
    """The metadata written into every ONNX file: the model's name, task, labels and specs."""
    spec = as_json(meta)
    return {
        "nnship.model": name,
        "nnship.task": meta.output.task,
        "nnship.labels": meta.output.labels,
        "nnship.input": {k: v for k, v in spec["input"].items() if k != "stats"},
        "nnship.output": spec["output"],
        "nnship.architecture": spec["architecture"],
    }


def build_one(
    v: str, raw: Path, folder: Path, run: Run, threads: int
) -> tuple[Any, dict[str, Any]]:
    """Build one variant file and open it: (session, entry), or (None, an unshipped entry)."""
    path = folder / f"{v}.onnx"
    entry: dict[str, Any] = {
        "file": path.name,
        "providers": GPU_ONLY.get(v, [CPU, "CUDAExecutionProvider"]),
    }
    try:
        build_variant(v, raw, path, run.rows.x_calibration)
        return cpu_session(path, threads), entry
    except Exception as e:  # a quantizer or converter that cannot handle the graph
        if v == "fp32":
            raise NnshipError(f"fp32 variant could not be built: {e}") from e
        log.warning("variant %s not built: %s", v, e)
        path.unlink(missing_ok=True)
        return None, {**entry, "shipped": False, "reason": f"build failed: {type(e).__name__}: {e}"}


def verify_one(
    v: str, session: Any, run: Run, batches: dict[str, np.ndarray], torch_out: np.ndarray
) -> dict[str, Any]:
    """Parity against PyTorch on the edge batches and the test figures; fp32 must pass parity."""
    classification = run.meta.output.task == "classification"
    strict = v == "fp32"
    parity = check_parity(
        session,
        run.model,
        batches,
        classification,
        atol=1e-4 if strict else 5e-2,
        rtol=1e-3 if strict else 5e-2,
    )
    outputs = run_session(session, run.rows.x_test)
    _, value, full = _metric(run.meta.output.task, outputs, run.rows.y_test)
    if classification:
        agreement = float((outputs.argmax(1) == torch_out.argmax(1)).mean())
        diff = np.abs(softmax(outputs.astype(np.float64)) - softmax(torch_out.astype(np.float64)))
    else:
        agreement = float(np.abs(outputs - torch_out).max())
        diff = np.abs(outputs.astype(np.float64) - torch_out)
    if strict and not parity.passed:
        raise ParityError(f"fp32 export disagrees with PyTorch: {parity.problem}; nothing shipped")
    return {
        "parity": parity.as_dict(),
        "test_metric": value,
        "metrics": full,
        "agreement_with_pytorch": agreement,
        "output_diff": {
            "on": "probabilities" if classification else "raw outputs",
            "max_abs": float(diff.max()),
            "rows": len(outputs),
        },
    }


def build_variants(
    variants: tuple[str, ...],
    raw: Path,
    folder: Path,
    run: Run,
    opts: ExportOptions,
    progress: Any,
) -> Built:
    """Build, open and verify every requested variant; failures other than fp32's are recorded."""
    threads = opts.threads
    batches = edge_batches(run.rows.x_test, run.model.name in RECURRENT, opts.max_batch)
    torch_out = run_torch(run.model, run.rows.x_test)
    built = Built(torch_out=torch_out)
    for v in variants:
        session, entry = build_one(v, raw, folder, run, threads)
        if session is not None:
            path = folder / entry["file"]
            entry.update(verify_one(v, session, run, batches, torch_out))
            entry.update(shipped=True, sha256=sha256_file(path), size_bytes=path.stat().st_size)
            entry["batch_coupled_ops"] = batch_coupled_ops(path.read_bytes())
            built.sessions[v] = session
        built.results[v] = entry
        progress.done(v)
    return built


def benchmark(built: Built, run: Run, opts: ExportOptions) -> dict[str, float]:
    """Latency and throughput of every shipped variant and PyTorch eager; returns PyTorch's."""
    threads = opts.threads
    x = run.rows.x_test
    row, big = x[:1], np.resize(x, (opts.bench_batch, *x.shape[1:]))
    runners = {v: ort_runner(sess) for v, sess in built.sessions.items()}
    runners["pytorch"] = torch_runner(run.model, threads)
    speeds = measure_rounds(runners, row, big, opts.bench_seconds)
    for v in built.sessions:
        built.results[v]["speed"] = speeds[v]
    return speeds["pytorch"]


def apply_budget(results: dict[str, dict[str, Any]], budget: float, folder: Path) -> None:
    """Record each variant's metric against fp32; unship (and delete) those over the budget."""
    base = results["fp32"]["test_metric"]
    for v, entry in results.items():
        if not entry.get("shipped"):
            continue
        entry["metric_delta"] = entry["test_metric"] - base
        entry["within_budget"] = base - entry["test_metric"] <= budget
        if v != "fp32" and not entry["within_budget"]:
            entry.update(
                shipped=False,
                reason=f"test metric {entry['test_metric']:.4f} is "
                f"{base - entry['test_metric']:.4f} below fp32, over the budget {budget}",
            )
            (folder / entry["file"]).unlink()


def build_manifest(
    name: str,
    run: Run,
    exporter: dict[str, Any],
    built: Built,
    pytorch: dict[str, float],
    opts: ExportOptions,
) -> Manifest:
    """The package's manifest, with the default variant chosen, checked against its contract."""
    results, task = built.results, run.meta.output.task
    choice = choose_default(
        results, opts.accuracy_budget, CPU, opts.objective, batch=opts.bench_batch
    )
    reason = choice.pop("reason")
    gpu = "fp16" if results.get("fp16", {}).get("shipped") else "fp32"
    key, torch_metric, _ = _metric(task, built.torch_out, run.rows.y_test)
    spec = as_json(run.meta)
    record = {
        "format": PACKAGE_FORMAT,
        "model": name,
        "version": None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": task,
        "family": run.model.name,
        "dataset": run.meta.dataset.name,
        "input": spec["input"],
        "output": spec["output"],
        "architecture": spec["architecture"],
        "checkpoint_sha256": run.meta.weights.sha256,
        "exporter": exporter,
        "metric": key,
        "accuracy_budget": opts.accuracy_budget,
        "measured_on": {
            "provider": CPU,
            "threads": opts.threads,
            "bench_batch": opts.bench_batch,
        },
        "pytorch": {"test_metric": torch_metric, "speed": pytorch},
        "variants": results,
        "default_variant": choice["chosen"],
        "default_reason": reason,
        "choice": choice,
        "gpu_variant": gpu,
    }
    return parse(Manifest, record, MANIFEST, "nnship model package")


def write_package(folder: Path, manifest: Manifest) -> None:
    """manifest.json and the report into the staged package folder."""
    write_record(folder / MANIFEST, manifest)
    write_report(folder, manifest)


def import_to_store(folder: Path, manifest: Manifest) -> Manifest:
    """Copy the package into the model store; the manifest now carries the store's version."""
    manifest = manifest.model_copy(update={"version": save_to_store(folder, manifest)})
    write_record(folder / MANIFEST, manifest)
    return manifest


def check_options(opts: ExportOptions) -> tuple[tuple[str, ...], str, Path, bool]:
    """Refuse bad options before any work: (variants, model name, package folder, replace it)."""
    variants = check_variants(tuple(opts.variants))
    name = model_name(opts)
    if not 0 <= opts.accuracy_budget < 1:
        raise NnshipError("--accuracy-budget must be in [0, 1)")
    if opts.objective not in OBJECTIVES:
        raise NnshipError(f"--objective {opts.objective!r}: valid are {', '.join(OBJECTIVES)}")
    out = Path(opts.out) if opts.out else Path(opts.run_dir) / "package"
    replace_out = check_out(out, Path(opts.run_dir), opts.out is not None, opts.overwrite)
    return variants, name, out, replace_out


def export_run(opts: ExportOptions) -> Manifest:
    """Export, verify, optimize, measure and package a run; returns the manifest as written."""
    variants, name, out, replace_out = check_options(opts)
    opts = replace(
        opts, threads=opts.threads or usable_cores()
    )  # 0: every usable core, counted once
    run = load_run(Path(opts.run_dir))
    check_writable(out.parent, "output directory")
    if opts.store:
        check_writable(store_home(), "BentoML model store")
    torch.set_num_threads(opts.threads)
    with (
        step_progress(["export", *variants, "pytorch", "package"]) as progress,
        tempfile.TemporaryDirectory() as work,
        staged_dir(out, replaceable=is_package if replace_out else None) as tmp,
    ):
        raw = Path(work) / "raw.onnx"
        exporter = export_onnx(run.model, raw, onnx_metadata(name, run.meta))
        progress.done("export")
        built = build_variants(variants, raw, tmp, run, opts, progress)
        pytorch = benchmark(built, run, opts)
        progress.done("pytorch")
        apply_budget(built.results, opts.accuracy_budget, tmp)
        manifest = build_manifest(name, run, exporter, built, pytorch, opts)
        write_package(tmp, manifest)
        if opts.store:
            manifest = import_to_store(tmp, manifest)
        progress.done("package")
    return manifest


def _store_safe(value: Any) -> Any:
    """BentoML metadata takes no None: drop such entries, recursively."""
    if isinstance(value, dict):
        return {k: _store_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_store_safe(v) for v in value if v is not None]
    return value


def save_to_store(package_dir: Path, manifest: Manifest) -> str:
    """Copy the package into the BentoML model store as MODEL:VERSION; returns the version."""
    import bentoml

    labels = {
        "family": manifest.family,
        "dataset": manifest.dataset,
        "default_variant": manifest.default_variant,
        "task": manifest.task,
    }
    record = as_json(manifest)
    summary = {k: v for k, v in record.items() if k not in ("input", "variants", "architecture")}
    summary["variants"] = {
        v: {k: e[k] for k in ("shipped", "test_metric", "sha256", "size_bytes") if k in e}
        for v, e in record["variants"].items()
    }
    try:
        with bentoml.models.create(
            manifest.model, labels=_store_safe(labels), metadata=_store_safe(summary)
        ) as bm:
            version = bm.tag.version
            # BentoML stages the entry in a private 0700 folder, whose mode its copy keeps
            os.chmod(bm.path, plain_dir_mode(Path(bm.path).parent))
            for f in package_dir.iterdir():
                if f.is_file() and f.name != MANIFEST:
                    shutil.copy2(f, bm.path_of(f.name))
            stored = manifest.model_copy(update={"version": version})
            write_record(Path(bm.path_of(MANIFEST)), stored)
    except OSError as e:
        raise NnshipError(f"cannot save {manifest.model} into the BentoML model store: {e}") from e
    log.info("saved %s:%s into the BentoML model store", manifest.model, version)
    return version
