"""The Trainer: model, optimizer, schedule, augmentation, DDP set-up by RANK, snapshots and evaluation."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from nnship.errors import NnshipError
from nnship.models import Network, build_model
from nnship.training import checkpoint as ckpt
from nnship.training.data import Dataset, Splits
from nnship.training.metrics import evaluate_arrays
from nnship.training.progress import epoch_progress
from nnship.training.recipes import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class History:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); (0, 1, 0) outside torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    return (
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def pick_device(name: str, local_rank: int) -> torch.device:
    """The torch device for `--device` (auto: CUDA when present); under DDP, the local rank's GPU."""
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
            # images (B, C, H, W); sequences of image rows (B, T, F) as one channel
            if self.augment:
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


def evaluate(trainer: Trainer, cfg: TrainConfig, seconds: float) -> dict[str, Any]:
    """metrics.json's content: test and validation metrics of the best weights, and run facts."""
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
