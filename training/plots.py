"""Training curves, confusion matrix and regression scatter as PNG (written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nnship.io import atomic_write


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(path: Path, history: Any, task: str) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(history.epoch, history.train_loss, label="train")
    a.plot(history.epoch, history.val_loss, label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(history.epoch, history.val_metric, color="tab:green")
    name = "accuracy" if task == "classification" else "R²"
    b.set(xlabel="epoch", ylabel=name, title=f"validation {name}")
    _save(fig, path)


def plot_confusion(path: Path, y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(labels), 1 + 0.5 * len(labels)))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(labels))),
        display_labels=labels,
        ax=ax,
        colorbar=False,
    )
    ax.set_title("test split")
    _save(fig, path)


def plot_regression(path: Path, y_true: np.ndarray, y_pred: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y_true, y_pred, s=10, alpha=0.7)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
    ax.set(xlabel="true", ylabel="predicted", title="test split")
    _save(fig, path)
