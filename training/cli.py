"""`nnship train` / `python -m nnship.training` / `torchrun -m nnship.training`: a thin parser over train()."""

from __future__ import annotations

import argparse
import json
import logging
import os

from nnship.errors import NnshipError
from nnship.models import ACTIVATIONS, REGISTRY
from nnship.training.data import BUILTIN
from nnship.training.recipes import LOSSES, OPTIMIZERS, SCHEDULES, TrainConfig
from nnship.training.train import train

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--model", choices=list(REGISTRY), default=d.model)
    p.add_argument(
        "--dataset",
        default=d.dataset,
        metavar="{" + ",".join(BUILTIN) + ",FILE}",
        help="a built-in data set or a .csv/.parquet/.npz file",
    )
    p.add_argument("--target", help="target column of a CSV or Parquet file")
    p.add_argument("--task", choices=["auto", "classification", "regression"], default=d.task)
    p.add_argument("--activation", choices=list(ACTIVATIONS))
    p.add_argument(
        "--model-config",
        type=json.loads,
        default={},
        metavar="JSON",
        help="family config overrides, e.g. '{\"hidden\": [128, 64]}'",
    )
    p.add_argument(
        "--select-k", type=int, default=0, help="keep the k most informative features (mlp)"
    )
    p.add_argument("--pca", type=int, default=0, help="project onto n principal components (mlp)")
    p.add_argument(
        "--standardize",
        choices=["element", "channel", "feature", "none"],
        help="statistics per input element, image channel or sequence feature "
        "(default: channel for images, feature for sequences, element otherwise)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    p.add_argument("--loss", choices=LOSSES)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument(
        "--class-weights", action="store_true", help="weight classes by inverse frequency"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of the training split held out for early stopping",
    )
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    p.add_argument("--out", default=d.out, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run (or its .snapshot) from its last epoch"
    )


def run(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if not isinstance(values.get("model_config"), dict):
        raise NnshipError("--model-config must be a JSON object")
    metrics = train(TrainConfig(**values), resume=args.resume)
    if int(os.environ.get("RANK", 0)) == 0:
        shown = {
            k: v
            for k, v in metrics.items()
            if k.startswith("test_") or k in ("epochs", "train_seconds")
        }
        print(
            f"wrote {args.out}: "
            + "  ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from nnship.runner import run_guarded

    p = argparse.ArgumentParser(prog="nnship train", description="Train a network on a data set.")
    add_arguments(p)
    return run_guarded(run, p.parse_args(argv))
