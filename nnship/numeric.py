"""The one softmax: how every stage turns a classifier's logits into probabilities."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, log: bool = False) -> np.ndarray:
    """Row-wise probabilities of (N, C) logits (or their logarithms with log=True), computed from
    the logits less each row's maximum so that no magnitude overflows."""
    z = logits - logits.max(axis=1, keepdims=True)
    if log:
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
