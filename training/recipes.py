"""Training configuration: the valid choices, per-model recipes, and TrainConfig that resolves them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nnship.errors import NnshipError
from nnship.models import REGISTRY
from nnship.training.data import Dataset

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
    # adamw | adam | sgd (momentum 0.9, nesterov); None: the recipe's, else adamw
    optimizer: str | None = None
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
