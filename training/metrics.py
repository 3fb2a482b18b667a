"""Test and validation figures from raw network outputs."""

from __future__ import annotations

import numpy as np

from nnship.numeric import softmax


def evaluate_arrays(task: str, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Classification: accuracy, macro F1, log loss; regression: R², MAE, RMSE (outputs (N, 1))."""
    from sklearn import metrics as m

    if task == "classification":
        pred = outputs.argmax(1)
        logp = softmax(outputs, log=True)
        return {
            "accuracy": float(m.accuracy_score(y, pred)),
            "f1_macro": float(m.f1_score(y, pred, average="macro")),
            "log_loss": float(-logp[np.arange(len(y)), y].mean()),
        }
    pred = outputs.reshape(len(y))
    return {
        "r2": float(m.r2_score(y, pred)),
        "mae": float(m.mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(m.mean_squared_error(y, pred))),
    }
