"""The run directory: checks before training, the config of a run to resume, and the finished run's files."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nnship.errors import NnshipError
from nnship.io import atomic_write_json, holds_record, staged_dir
from nnship.training import checkpoint as ckpt
from nnship.training.data import Dataset, Splits, input_stats
from nnship.training.heldout import save_heldout
from nnship.training.recipes import TrainConfig
from nnship.training.trainer import Trainer


def resume_config(cfg: TrainConfig, resume: Path) -> TrainConfig:
    """The recorded config of the run to resume, with this call's epochs, output and overwrite."""
    state_meta = resume / ckpt.STATE_META
    if not resume.is_dir():
        raise NnshipError(f"run directory {resume} does not exist")
    if not state_meta.is_file():
        raise NnshipError(f"{state_meta}: missing; this run cannot be resumed")
    try:
        recorded = json.loads(state_meta.read_text())["config"]
    except (json.JSONDecodeError, KeyError) as e:
        raise NnshipError(f"{state_meta}: unreadable training state ({e})") from e
    recorded.update(out=cfg.out, overwrite=cfg.overwrite)
    if cfg.epochs is not None:
        recorded["epochs"] = cfg.epochs
    return TrainConfig(**recorded)


def is_run(folder: Path) -> bool:
    """Whether `folder` is a finished nnship run (its checkpoint record is there)."""
    return holds_record(folder, ckpt.META, ckpt.FORMAT)


def check_out(out: Path, resume: Path | None, overwrite: bool) -> None:
    """Only a finished nnship run is ever replaced (with --overwrite, or by resuming it in place);
    any other folder, a symbolic link, or a folder holding the working directory never is."""
    if out.is_symlink():
        raise NnshipError(f"--out {out} is a symbolic link; it is never replaced")
    if not out.exists():
        return
    if not is_run(out) or out.resolve() in [
        Path.cwd(),
        *Path.cwd().parents,
    ]:
        raise NnshipError(
            f"--out {out} exists and is not an nnship run directory; it is never replaced"
        )
    in_place = resume is not None and out.resolve() == resume.resolve()
    if not overwrite and not in_place:
        raise NnshipError(f"{out} already exists; pass --overwrite to replace it")


def write_run(
    out: Path, trainer: Trainer, cfg: TrainConfig, ds: Dataset, sp: Splits, metrics: dict[str, Any]
) -> None:
    """Write checkpoint, training state, metrics.json and plots into `out`, atomically."""
    from nnship.training.plots import headline, plot_confusion, plot_curves, plot_regression

    model = trainer.model
    meta = {
        "input": {
            "name": "input",
            "shape": list(ds.input_shape),
            "dtype": "float32",
            "layout": ds.layout,
            "feature_names": ds.feature_names,
            "stats": input_stats(ds, sp.x_train),
        },
        "output": {
            "name": "output",
            "task": ds.task,
            "labels": ds.labels,
            "shape": [ds.num_outputs],
        },
        "seed": cfg.seed,
        "dataset": {
            "name": ds.name,
            "source": cfg.dataset,
            "sha256": ds.fingerprint(),
            "rows": {"train": len(sp.x_train), "val": len(sp.x_val), "test": len(sp.x_test)},
        },
        "training": dataclasses.asdict(cfg),
        "versions": ckpt.library_versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with staged_dir(out, replaceable=is_run) as tmp:
        meta["heldout"] = save_heldout(tmp, sp.x_train, sp.x_test, sp.y_test)
        ckpt.save_checkpoint(tmp, model, meta)
        trainer._save_snapshot(tmp)
        atomic_write_json(tmp / "metrics.json", metrics)
        title = headline(cfg.model, ds.name, metrics)
        plot_curves(
            tmp / "training_curves.png", trainer.history, ds.task, title, metrics["best_epoch"]
        )
        if ds.task == "classification":
            pred = trainer.predict(sp.x_test).argmax(1)
            plot_confusion(tmp / "confusion_matrix.png", sp.y_test, pred, ds.labels, title)
        else:
            pred = trainer.predict(sp.x_test)[:, 0]
            plot_regression(tmp / "predictions.png", sp.y_test, pred, title)
