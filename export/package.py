"""Run directory -> verified, optimized model package -> BentoML model store."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnship.errors import NnshipError
from nnship.export.bench import measure_rounds, ort_runner, torch_runner
from nnship.export.choose import choose_default
from nnship.export.onnx_export import export_onnx
from nnship.export.parity import ParityError, check_parity, edge_batches, run_session, run_torch
from nnship.export.report import write_report
from nnship.export.runtime import CPU, cpu_session
from nnship.export.store import FORMAT, MANIFEST, is_package
from nnship.export.variants import VARIANTS, build_variant
from nnship.io import atomic_write_json, dir_mode, sha256_file, staged_dir
from nnship.models import RECURRENT
from nnship.training.checkpoint import load_checkpoint
from nnship.training.data import load_dataset, split
from nnship.training.metrics import evaluate_arrays
from nnship.training.progress import step_progress

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
GPU_ONLY = {"fp16": ["CUDAExecutionProvider"]}
CALIBRATION_ROWS = 512


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
    bench_batch: int = 256  # batch size of the throughput measurement
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


def _load_splits(meta: dict[str, Any]):
    src, train_cfg = meta["dataset"], meta.get("training", {})
    ds = load_dataset(src["source"], train_cfg.get("target"), train_cfg.get("task", "auto"))
    if ds.fingerprint() != src["sha256"]:
        raise NnshipError(f"data set {src['source']} changed since training (sha256 differs)")
    return split(ds, val_size=train_cfg.get("val_fraction", 0.15))


def _metric(task: str, outputs: np.ndarray, y: np.ndarray) -> tuple[str, float, dict[str, float]]:
    full = evaluate_arrays(task, outputs, y)
    key = "accuracy" if task == "classification" else "r2"
    return f"test_{key}", full[key], {f"test_{k}": v for k, v in full.items()}


def export_run(opts: ExportOptions) -> dict[str, Any]:
    """Export, verify, optimize, measure and package a run; returns the manifest."""
    variants = check_variants(tuple(opts.variants))
    name = model_name(opts)
    if not 0 <= opts.accuracy_budget < 1:
        raise NnshipError("--accuracy-budget must be in [0, 1)")
    out = Path(opts.out) if opts.out else Path(opts.run_dir) / "package"
    replace = check_out(out, Path(opts.run_dir), opts.out is not None, opts.overwrite)
    model, meta = load_checkpoint(opts.run_dir)
    check_writable(out.parent, "output directory")
    if opts.store:
        check_writable(store_home(), "BentoML model store")
    sp = _load_splits(meta)
    threads = opts.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    task = meta["output"]["task"]
    sequence = model.name in RECURRENT
    onnx_meta = {
        "nnship.model": name,
        "nnship.task": task,
        "nnship.labels": meta["output"]["labels"],
        "nnship.input": {k: v for k, v in meta["input"].items() if k != "stats"},
        "nnship.output": meta["output"],
        "nnship.architecture": meta["architecture"],
    }
    batches = edge_batches(sp.x_test, sequence, opts.max_batch)
    row, big = sp.x_test[:1], np.resize(sp.x_test, (opts.bench_batch, *sp.x_test.shape[1:]))
    classification = task == "classification"
    results: dict[str, dict[str, Any]] = {}
    steps = ["export", *variants, "pytorch", "package"]
    with (
        step_progress(steps) as progress,
        tempfile.TemporaryDirectory() as work,
        staged_dir(out, replaceable=is_package if replace else None) as tmp,
    ):
        raw = Path(work) / "raw.onnx"
        exporter = export_onnx(model, raw, onnx_meta)
        progress.done("export")
        torch_out = run_torch(model, sp.x_test)
        sessions: dict[str, Any] = {}
        for v in variants:
            path = tmp / f"{v}.onnx"
            entry: dict[str, Any] = {
                "file": path.name,
                "providers": GPU_ONLY.get(v, [CPU, "CUDAExecutionProvider"]),
            }
            try:
                build_variant(v, raw, path, sp.x_train[:CALIBRATION_ROWS])
                session = cpu_session(path, threads)
            except Exception as e:  # a quantizer or converter that cannot handle the graph
                if v == "fp32":
                    raise NnshipError(f"fp32 variant could not be built: {e}") from e
                log.warning("variant %s not built: %s", v, e)
                path.unlink(missing_ok=True)
                results[v] = {
                    **entry,
                    "shipped": False,
                    "reason": f"build failed: {type(e).__name__}: {e}",
                }
                progress.done(v)
                continue
            strict = v == "fp32"
            parity = check_parity(
                session,
                model,
                batches,
                classification,
                atol=1e-4 if strict else 5e-2,
                rtol=1e-3 if strict else 5e-2,
            )
            outputs = run_session(session, sp.x_test)
            key, value, full = _metric(task, outputs, sp.y_test)
            if classification:
                agreement = float((outputs.argmax(1) == torch_out.argmax(1)).mean())
            else:
                agreement = float(np.abs(outputs - torch_out).max())
            entry.update(
                parity=parity.as_dict(),
                test_metric=value,
                metrics=full,
                agreement_with_pytorch=agreement,
            )
            if strict and not parity.passed:
                raise ParityError(
                    f"fp32 export disagrees with PyTorch: {parity.problem}; nothing shipped"
                )
            entry["shipped"] = True
            sessions[v] = session
            entry["sha256"] = sha256_file(path)
            entry["size_bytes"] = path.stat().st_size
            results[v] = entry
            progress.done(v)
        runners = {v: ort_runner(sess) for v, sess in sessions.items()}
        runners["pytorch"] = torch_runner(model, threads)
        speeds = measure_rounds(runners, row, big, opts.bench_seconds)
        for v in sessions:
            results[v]["speed"] = speeds[v]
        pytorch = speeds["pytorch"]
        progress.done("pytorch")
        base = results["fp32"]["test_metric"]
        for v, entry in results.items():
            if not entry.get("shipped"):
                continue
            entry["metric_delta"] = entry["test_metric"] - base
            entry["within_budget"] = base - entry["test_metric"] <= opts.accuracy_budget
            if v != "fp32" and not entry["within_budget"]:
                entry.update(
                    shipped=False,
                    reason=f"test metric {entry['test_metric']:.4f} is "
                    f"{base - entry['test_metric']:.4f} below fp32, over the budget {opts.accuracy_budget}",
                )
                (tmp / entry["file"]).unlink()
        default, reason = choose_default(results, opts.accuracy_budget, CPU)
        gpu = "fp16" if results.get("fp16", {}).get("shipped") else "fp32"
        manifest = {
            "format": FORMAT,
            "model": name,
            "version": None,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "task": task,
            "family": model.name,
            "dataset": meta["dataset"]["name"],
            "input": meta["input"],
            "output": meta["output"],
            "architecture": meta["architecture"],
            "checkpoint_sha256": meta["weights"]["sha256"],
            "exporter": exporter,
            "metric": key,
            "accuracy_budget": opts.accuracy_budget,
            "measured_on": {"provider": CPU, "threads": threads, "bench_batch": opts.bench_batch},
            "pytorch": {"test_metric": _metric(task, torch_out, sp.y_test)[1], "speed": pytorch},
            "variants": results,
            "default_variant": default,
            "default_reason": reason,
            "gpu_variant": gpu,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        write_report(tmp, manifest)
        if opts.store:
            manifest["version"] = save_to_store(tmp, manifest)
            atomic_write_json(tmp / MANIFEST, manifest)
        progress.done("package")
    return manifest


def _store_safe(value: Any) -> Any:
    """BentoML metadata takes no None: drop such entries, recursively."""
    if isinstance(value, dict):
        return {k: _store_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_store_safe(v) for v in value if v is not None]
    return value


def save_to_store(package_dir: Path, manifest: dict[str, Any]) -> str:
    """Copy the package into the BentoML model store as MODEL:VERSION; returns the version."""
    import bentoml

    labels = {
        "family": manifest["family"],
        "dataset": manifest["dataset"],
        "default_variant": manifest["default_variant"],
        "task": manifest["task"],
    }
    summary = {k: v for k, v in manifest.items() if k not in ("input", "variants", "architecture")}
    summary["variants"] = {
        v: {k: e[k] for k in ("shipped", "test_metric", "sha256", "size_bytes") if k in e}
        for v, e in manifest["variants"].items()
    }
    try:
        with bentoml.models.create(
            manifest["model"], labels=labels, metadata=_store_safe(summary)
        ) as bm:
            manifest = {**manifest, "version": bm.tag.version}
            # BentoML stages the entry in a private 0700 folder, whose mode its copy keeps
            os.chmod(bm.path, dir_mode())
            for f in package_dir.iterdir():
                if f.is_file() and f.name != MANIFEST:
                    shutil.copy2(f, bm.path_of(f.name))
            atomic_write_json(Path(bm.path_of(MANIFEST)), manifest)
    except OSError as e:
        raise NnshipError(
            f"cannot save {manifest['model']} into the BentoML model store: {e}"
        ) from e
    log.info("saved %s:%s into the BentoML model store", manifest["model"], manifest["version"])
    return manifest["version"]
