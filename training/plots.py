"""Training curves, confusion matrix and regression scatter as PNG (written atomically); each title
names the model, the data set and the headline test metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from nnship.io import atomic_write

KEPT = "kept"  # label prefix of the kept-epoch marker


def headline(model: str, dataset: str, metrics: dict[str, Any]) -> str:
    """'mlp on wine: test accuracy 0.9722' (regression: test R² and MAE)."""
    if "test_accuracy" in metrics:
        figure = f"test accuracy {metrics['test_accuracy']:.4f}"
    else:
        figure = f"test R² {metrics['test_r2']:.4f}, MAE {metrics['test_mae']:.4g}"
    return f"{model} on {dataset}: {figure}"


def save(fig: Figure, path: Path) -> Figure:
    """Write the figure as PNG, atomically; returns it."""
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    return fig


def plot_curves(path: Path, history: Any, task: str, title: str, kept_epoch: int) -> Figure:
    """Loss and validation metric per epoch, with the epoch whose weights were kept marked."""
    fig = Figure(figsize=(10, 3.8))
    a, b = fig.subplots(1, 2)
    a.plot(history.epoch, history.train_loss, label="train")
    a.plot(history.epoch, history.val_loss, label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(history.epoch, history.val_metric, color="tab:green", label="validation")
    name = "accuracy" if task == "classification" else "R²"
    b.set(xlabel="epoch", ylabel=name, title=f"validation {name}")
    for ax in (a, b):
        ax.axvline(
            kept_epoch,
            color="black",
            ls="--",
            lw=1,
            label=f"{KEPT}: epoch {kept_epoch} (lowest validation loss)",
        )
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def plot_confusion(
    path: Path, y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], title: str
) -> Figure:
    """Confusion matrix on the test split."""
    from sklearn.metrics import ConfusionMatrixDisplay

    side = max(4.0, 1.2 + 0.5 * len(labels))
    fig = Figure(figsize=(side + 1, side))
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(labels))),
        display_labels=labels,
        ax=ax,
        colorbar=False,
    )
    ax.set_title(f"{title}\nconfusion matrix, test split", fontsize=10)
    return save(fig, path)


def plot_regression(path: Path, y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Predicted against true on the test split, with R² and MAE."""
    from sklearn.metrics import mean_absolute_error, r2_score

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(y_true, y_pred, s=10, alpha=0.7)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="predicted = true")
    r2, mae = r2_score(y_true, y_pred), mean_absolute_error(y_true, y_pred)
    ax.text(
        0.03,
        0.97,
        f"R² = {r2:.4f}\nMAE = {mae:.4g}",
        transform=ax.transAxes,
        va="top",
        bbox={"facecolor": "white", "alpha": 0.8},
    )
    ax.set(xlabel="true", ylabel="predicted")
    ax.set_title(f"{title}\npredicted vs true, test split", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)
