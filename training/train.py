"""`train(config)`: load the data, train (single process, or data parallel under torchrun), write the run."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nnship.cpus import usable_cores
from nnship.training import checkpoint as ckpt
from nnship.training.data import load_dataset, split
from nnship.training.recipes import TrainConfig
from nnship.training.run import check_out, resume_config, write_run
from nnship.training.trainer import Trainer, dist_env, evaluate, pick_device

__all__ = ["TrainConfig", "train"]


def train(cfg: TrainConfig, resume: str | Path | None = None) -> dict[str, Any]:
    """Train, evaluate on the test split and write the run directory; returns metrics.json's content."""
    t0 = time.perf_counter()
    if resume is not None:
        resume = Path(resume)
        if not resume.name.endswith(".snapshot"):  # a finished run: its checkpoint must verify too
            ckpt.load_checkpoint(resume)
        cfg = resume_config(cfg, resume)
    out = Path(cfg.out)
    check_out(out, resume, cfg.overwrite)
    rank, world, local_rank = dist_env()
    ds = load_dataset(cfg.dataset, cfg.target, cfg.task)
    cfg = cfg.resolved(ds)
    device = pick_device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    sp = split(ds, val_size=cfg.val_fraction)
    trainer = Trainer(cfg, ds, sp, rank, world, device)
    if resume is not None:
        trainer.restore(resume)
    snapshot = out.with_name(f"{out.name}.snapshot")
    trainer.fit(snapshot)
    metrics = evaluate(trainer, cfg, time.perf_counter() - t0)
    if rank == 0:
        write_run(out, trainer, cfg, ds, sp, metrics)
        shutil.rmtree(snapshot, ignore_errors=True)
    if world > 1:
        dist.barrier()
    return metrics
