"""The training loop: single process, or data parallel under torchrun (switched on by RANK)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from nnship.errors import NnshipError
from nnship.io import atomic_write_json, holds_record, staged_dir
from nnship.models import REGISTRY, Network, build_model
from nnship.training import checkpoint as ckpt
from nnship.training.data import Dataset, Splits, input_stats, load_dataset, split
from nnship.training.heldout import save_heldout
from nnship.training.metrics import evaluate_arrays
from nnship.training.progress import epoch_progress

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "step", "none")
LOSSES = ("cross-entropy", "mse", "huber")
STANDARDIZE_BY_LAYOUT = {"tabular": "element", "image": "channel", "sequence": "feature"}

# Defaults of `nnship train` per family, then per (family, dataset); flags override them.
RECIPES: dict[Any, dict[str, Any]] = {
    "mlp": dict(epochs=80, batch_size=64, lr=3e-3, weight_decay=1e-4, patience=20),
    "cnn": dict(epochs=40, batch_size=64, lr=4e-3, weight_decay=5e-4, patience=15),
    "rnn": dict(epochs=60, batch_size=64, lr=3e-3, weight_decay=1e-4, patience=20),
    "lstm": dict(epochs=40, batch_size=64, lr=4e-3, weight_decay=1e-4, patience=15),
    "gru": dict(epochs=40, batch_size=64, lr=4e-3, weight_decay=1e-4, patience=15),
    ("mlp", "digits"): dict(label_smoothing=0.1, model_config={"hidden": [512, 256]}),
    ("rnn", "digits-seq"): dict(augment=True),
    ("lstm", "digits-seq"): dict(augment=True),
    ("gru", "digits-seq"): dict(augment=True),
    # small tabular sets: a narrow net with coupled L2, trained to the end (best epoch kept)
    ("mlp", "breast-cancer"): dict(
        optimizer="adam",
        activation="tanh",
        weight_decay=3e-3,
        epochs=100,
        patience=0,
        model_config={"hidden": [32], "dropout": 0.0, "batch_norm": False},
    ),
    ("mlp", "diabetes"): dict(
        optimizer="adam",
        weight_decay=1e-2,
        epochs=100,
        patience=0,
        loss="mse",
        model_config={"hidden": [32], "dropout": 0.2, "batch_norm": False},
    ),
}


@dataclass
class TrainConfig:
    model: str = "cnn"  # mlp | cnn | rnn | lstm | gru
    dataset: str = "digits"  # a built-in name or a CSV / Parquet / NPZ file
    target: str | None = None  # target column of a CSV / Parquet file
    task: str = "auto"  # auto | classification | regression (user files)
    activation: str | None = None  # overrides the family's default activation
    model_config: dict[str, Any] = field(default_factory=dict)  # family config overrides
    select_k: int = 0  # keep the k most informative features (mlp only)
    pca: int = 0  # project onto n principal components (mlp only)
    standardize: str | None = None  # element | channel | feature | none (None: by data layout)
    epochs: int | None = None  # None: the recipe's value
    batch_size: int | None = None  # global batch, split across DDP ranks
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = (
        None  # adamw | adam | sgd (momentum 0.9, nesterov); None: recipe or adamw
    )
    schedule: str = "onecycle"  # onecycle | cosine | step | none
    loss: str | None = None  # cross-entropy (classification) | mse | huber (regression)
    label_smoothing: float | None = None  # cross-entropy only; None: recipe or 0
    class_weights: bool = False  # weight classes by inverse training frequency
    val_fraction: float = 0.15  # of the training split, held out for early stopping
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    patience: int | None = None  # early stopping on validation loss; 0 disables
    augment: bool | None = None  # small random pixel shifts (default: on for images and digits-seq)
    amp: bool = True  # mixed precision (bfloat16 autocast) when training on CUDA
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    out: str = "runs/default"
    overwrite: bool = False

    def resolved(self, ds: Dataset) -> TrainConfig:
        """Fill unset fields from the recipe for (model, dataset) and the data layout; validate."""
        if self.model not in REGISTRY:
            raise NnshipError(f"unknown model {self.model!r}; valid: {', '.join(REGISTRY)}")
        recipe = {
            "optimizer": "adamw",
            "label_smoothing": 0.0,
            **RECIPES[self.model],
            **RECIPES.get((self.model, ds.name), {}),
        }
        recipe.setdefault("augment", ds.layout == "image")
        recipe.setdefault("standardize", STANDARDIZE_BY_LAYOUT[ds.layout])
        values = dataclasses.asdict(self)
        for k, v in recipe.items():
            if k == "model_config":
                values[k] = {**v, **self.model_config}
            elif values.get(k) is None:
                values[k] = v
        cfg = TrainConfig(**values)
        for name, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(cfg, name) not in valid:
                raise NnshipError(
                    f"unknown {name} {getattr(cfg, name)!r}; valid: {', '.join(valid)}"
                )
        if cfg.loss is not None and cfg.loss not in LOSSES:
            raise NnshipError(f"unknown loss {cfg.loss!r}; valid: {', '.join(LOSSES)}")
        for name in ("epochs", "batch_size"):
            if getattr(cfg, name) < 1:
                raise NnshipError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0.0 < cfg.val_fraction < 0.5:
            raise NnshipError("--val-fraction must be in (0, 0.5)")
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise NnshipError("--label-smoothing must be in [0, 1)")
        return cfg


@dataclass
class History:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); (0, 1, 0) outside torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    return (
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise NnshipError("--device cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise NnshipError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device("cpu")


def shift_images(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each (C, H, W) image by up to max_shift pixels in each direction, zero fill."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(
        b, x.shape[1], h, w + 2 * max_shift
    )
    out = padded.gather(2, rows.to(x.device))
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, x.shape[1], h, w)
    return out.gather(3, cols.to(x.device))


class Trainer:
    """Owns model, optimizer, schedule and data; rank 0 alone logs and writes."""

    def __init__(
        self, cfg: TrainConfig, ds: Dataset, sp: Splits, rank: int, world: int, device: torch.device
    ):
        self.cfg, self.ds, self.sp = cfg, ds, sp
        self.rank, self.world, self.device = rank, world, device
        if cfg.batch_size % world:
            raise NnshipError(
                f"--batch-size {cfg.batch_size} must be divisible by the {world} processes"
            )
        self.local_batch = cfg.batch_size // world
        torch.manual_seed(cfg.seed)
        self.model = self._build_model()
        self.ddp = DDP(self.model) if world > 1 else None
        self.x_train = torch.from_numpy(sp.x_train)
        self.y_train = torch.from_numpy(sp.y_train)
        self.sampler = DistributedSampler(
            range(len(sp.x_train)), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.local_batch)
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.loss_fn = self._make_loss()
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
        self.augment = bool(cfg.augment)
        if self.augment and ds.layout == "tabular":
            raise NnshipError(
                "--augment shifts images or sequences; it does not apply to tabular data"
            )
        self.amp = cfg.amp and device.type == "cuda"
        self.history = History()
        self.start_epoch = 0
        self.best_val = math.inf
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.bad_epochs = 0

    # -- construction -----------------------------------------------------------------------
    def _build_model(self) -> Network:
        cfg, ds = self.cfg, self.ds
        mc = dict(cfg.model_config)
        if cfg.activation is not None:
            mc["activation"] = cfg.activation
        try:
            model = build_model(
                cfg.model,
                mc,
                ds.input_shape,
                ds.num_outputs,
                ds.task,
                {"standardize": cfg.standardize, "select_k": cfg.select_k, "pca": cfg.pca},
            )
        except (ValueError, TypeError) as e:
            raise NnshipError(
                f"cannot build {cfg.model} for {ds.name} {ds.input_shape}: {e}"
            ) from e
        model.preprocess.fit(self.sp.x_train, self.sp.y_train, ds.task, cfg.seed)
        if ds.task == "regression":
            model.target_mean.fill_(float(self.sp.y_train.mean()))
            model.target_std.fill_(float(self.sp.y_train.std()) or 1.0)
        return model.to(self.device)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=cfg.lr)

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler | None:
        cfg, total = self.cfg, self.cfg.epochs * self.steps_per_epoch
        if cfg.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.2
            )
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        if cfg.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(
                self.optimizer, step_size=max(1, total // 3), gamma=0.1
            )
        return None

    def _make_loss(self) -> nn.Module:
        cfg, ds = self.cfg, self.ds
        if ds.task == "classification":
            if cfg.loss not in (None, "cross-entropy"):
                raise NnshipError(
                    f"loss {cfg.loss!r} is for regression; classification uses cross-entropy"
                )
            weight = None
            if cfg.class_weights:
                counts = np.bincount(self.sp.y_train, minlength=ds.num_outputs).astype(np.float64)
                weight = torch.tensor(
                    len(self.sp.y_train) / (ds.num_outputs * np.maximum(counts, 1)),
                    dtype=torch.float32,
                    device=self.device,
                )
            return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        if cfg.loss == "cross-entropy":
            raise NnshipError("cross-entropy is for classification; regression uses mse or huber")
        return nn.HuberLoss() if cfg.loss == "huber" else nn.MSELoss()

    # -- training -----------------------------------------------------------------------------
    def _target(self, y: torch.Tensor) -> torch.Tensor:
        if self.ds.task == "regression":  # learn on the standardized target
            return ((y - self.model.target_mean) / self.model.target_std)[:, None]
        return y

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        net = self.ddp or self.model
        out = net(x)
        if self.ds.task == "regression":
            out = (out - self.model.target_mean) / self.model.target_std
        return out

    def _run_batch(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss_fn(self._outputs(x).float(), self._target(y))
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.detach())

    def _run_epoch(self, epoch: int) -> float:
        self.model.train()
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        total, count = 0.0, 0
        for i in range(0, len(order), self.local_batch):
            idx = order[i : i + self.local_batch]
            x, y = self.x_train[idx], self.y_train[idx]
            if (
                self.augment
            ):  # images (B, C, H, W); sequences of image rows (B, T, F) as one channel
                x = (
                    shift_images(x, self.aug_gen)
                    if x.ndim == 4
                    else shift_images(x[:, None], self.aug_gen)[:, 0]
                )
            total += self._run_batch(x.to(self.device), y.to(self.device)) * len(idx)
            count += len(idx)
        return total / max(count, 1)

    @torch.no_grad()
    def predict(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        self.model.eval()
        outs = [
            self.model(torch.from_numpy(x[i : i + batch]).to(self.device)).float().cpu()
            for i in range(0, len(x), batch)
        ]
        return torch.cat(outs).numpy()

    def _val_loss(self) -> tuple[float, float]:
        raw = self.predict(self.sp.x_val)
        out = torch.from_numpy(raw).to(self.device)
        if self.ds.task == "regression":
            out = (out - self.model.target_mean) / self.model.target_std
        loss = float(
            self.loss_fn(out, self._target(torch.from_numpy(self.sp.y_val).to(self.device)))
        )
        metric = evaluate_arrays(self.ds.task, raw, self.sp.y_val)
        return loss, metric["accuracy" if self.ds.task == "classification" else "r2"]

    def fit(self, snapshot_dir: Path | None) -> None:
        cfg = self.cfg
        patience = cfg.patience or 0
        with epoch_progress(cfg.epochs, enabled=self.rank == 0) as progress:
            progress.advance_to(self.start_epoch)
            for epoch in range(self.start_epoch, cfg.epochs):
                train_loss = self._run_epoch(epoch)
                val_loss, val_metric = self._val_loss()
                h = self.history
                h.epoch.append(epoch + 1)
                h.train_loss.append(train_loss)
                h.val_loss.append(val_loss)
                h.val_metric.append(val_metric)
                h.lr.append(self.optimizer.param_groups[0]["lr"])
                if val_loss < self.best_val - 1e-6:
                    self.best_val, self.bad_epochs = val_loss, 0
                    self.best_state = {
                        k: v.detach().clone() for k, v in self.model.state_dict().items()
                    }
                else:
                    self.bad_epochs += 1
                progress.update(epoch + 1, train_loss, val_loss, val_metric)
                self.start_epoch = epoch + 1
                if snapshot_dir is not None and self.rank == 0:
                    self._save_snapshot(snapshot_dir)
                if patience and self.bad_epochs >= patience:
                    log.info(
                        "early stop at epoch %d: no validation improvement for %d epochs",
                        epoch + 1,
                        patience,
                    )
                    break
        self.model.load_state_dict(self.best_state)

    # -- snapshots (resume) -----------------------------------------------------------------------
    def _save_snapshot(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tensors, optim_rest = ckpt.flatten_optimizer(self.optimizer)
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        tensors.update(
            {"rng.torch": torch.get_rng_state(), "rng.augment": self.aug_gen.get_state()}
        )
        state = {
            "epoch": self.start_epoch,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "bad_epochs": self.bad_epochs,
            "optimizer": optim_rest,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": dataclasses.asdict(self.history),
            "config": dataclasses.asdict(self.cfg),
            "data_sha256": self.ds.fingerprint(),
        }
        ckpt.save_training_state(run_dir, tensors, state)

    def restore(self, run_dir: Path) -> None:
        """Continue from a snapshot or a finished run: weights, optimizer, schedule, history."""
        tensors, state = ckpt.load_training_state(run_dir)
        if state.get("data_sha256") != self.ds.fingerprint():
            raise NnshipError(
                f"{run_dir}: was trained on different data (sha256 differs); cannot resume"
            )
        try:
            self.model.load_state_dict(
                {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            )
            self.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
            self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, state["optimizer"]))
            torch.set_rng_state(tensors["rng.torch"])
            self.aug_gen.set_state(tensors["rng.augment"])
            if self.scheduler is not None and state.get("scheduler"):
                sched = dict(state["scheduler"])
                sched["total_steps" if "total_steps" in sched else "T_max"] = (
                    self.cfg.epochs * self.steps_per_epoch
                )
                self.scheduler.load_state_dict(sched)
        except (RuntimeError, KeyError, ValueError) as e:
            raise NnshipError(f"{run_dir}: training state does not fit this model: {e}") from e
        self.start_epoch = int(state["epoch"])
        self.best_val = state["best_val_loss"] if state["best_val_loss"] is not None else math.inf
        self.bad_epochs = int(state["bad_epochs"])
        self.history = History(**state["history"])


def _resume_config(cfg: TrainConfig, resume: Path) -> TrainConfig:
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


def _is_run(folder: Path) -> bool:
    return holds_record(folder, ckpt.META, ckpt.FORMAT)


def _check_out(out: Path, resume: Path | None, overwrite: bool) -> None:
    """Only a finished nnship run is ever replaced (with --overwrite, or by resuming it in place);
    any other folder, a symbolic link, or a folder holding the working directory never is."""
    if out.is_symlink():
        raise NnshipError(f"--out {out} is a symbolic link; it is never replaced")
    if not out.exists():
        return
    if not _is_run(out) or out.resolve() in [
        Path.cwd(),
        *Path.cwd().parents,
    ]:
        raise NnshipError(
            f"--out {out} exists and is not an nnship run directory; it is never replaced"
        )
    in_place = resume is not None and out.resolve() == resume.resolve()
    if not overwrite and not in_place:
        raise NnshipError(f"{out} already exists; pass --overwrite to replace it")


def train(cfg: TrainConfig, resume: str | Path | None = None) -> dict[str, Any]:
    """Train, evaluate on the test split and write the run directory; returns metrics.json's content."""
    t0 = time.perf_counter()
    if resume is not None:
        resume = Path(resume)
        if not resume.name.endswith(".snapshot"):  # a finished run: its checkpoint must verify too
            ckpt.load_checkpoint(resume)
        cfg = _resume_config(cfg, resume)
    out = Path(cfg.out)
    _check_out(out, resume, cfg.overwrite)
    rank, world, local_rank = _dist_env()
    ds = load_dataset(cfg.dataset, cfg.target, cfg.task)
    cfg = cfg.resolved(ds)
    device = _pick_device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    )
    sp = split(ds, val_size=cfg.val_fraction)
    trainer = Trainer(cfg, ds, sp, rank, world, device)
    if resume is not None:
        trainer.restore(resume)
    snapshot = out.with_name(f"{out.name}.snapshot")
    trainer.fit(snapshot)
    metrics = _evaluate(trainer, cfg, time.perf_counter() - t0)
    if rank == 0:
        _write_run(out, trainer, cfg, ds, sp, metrics)
        shutil.rmtree(snapshot, ignore_errors=True)
    if world > 1:
        dist.barrier()
    return metrics


def _evaluate(trainer: Trainer, cfg: TrainConfig, seconds: float) -> dict[str, Any]:
    sp, task = trainer.sp, trainer.ds.task
    test = evaluate_arrays(task, trainer.predict(sp.x_test), sp.y_test)
    val = evaluate_arrays(task, trainer.predict(sp.x_val), sp.y_val)
    metrics: dict[str, Any] = {f"test_{k}": v for k, v in test.items()}
    metrics.update({f"val_{k}": v for k, v in val.items()})
    best_epoch = int(np.argmin(trainer.history.val_loss)) + 1 if trainer.history.val_loss else 0
    metrics.update(
        train_seconds=round(seconds, 3),
        epochs=len(trainer.history.epoch),
        best_epoch=best_epoch,
        processes=trainer.world,
        device=str(trainer.device.type),
    )
    return metrics


def _write_run(
    out: Path, trainer: Trainer, cfg: TrainConfig, ds: Dataset, sp: Splits, metrics: dict[str, Any]
) -> None:
    from nnship.training.plots import plot_confusion, plot_curves, plot_regression

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
    with staged_dir(out, replaceable=_is_run) as tmp:
        meta["heldout"] = save_heldout(tmp, sp.x_train, sp.x_test, sp.y_test)
        ckpt.save_checkpoint(tmp, model, meta)
        trainer._save_snapshot(tmp)
        atomic_write_json(tmp / "metrics.json", metrics)
        plot_curves(tmp / "training_curves.png", trainer.history, ds.task)
        if ds.task == "classification":
            pred = trainer.predict(sp.x_test).argmax(1)
            plot_confusion(tmp / "confusion_matrix.png", sp.y_test, pred, ds.labels)
        else:
            plot_regression(tmp / "predictions.png", sp.y_test, trainer.predict(sp.x_test)[:, 0])
