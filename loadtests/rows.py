"""Real rows from a data set's test split, for load generators."""

from __future__ import annotations

import json

from nnship.training.data import load_dataset, split


def test_rows(dataset: str, limit: int = 256) -> list:
    """Up to `limit` rows of the test split as nested lists (never the training data)."""
    return split(load_dataset(dataset)).x_test[:limit].tolist()


def predict_bodies(dataset: str, limit: int = 256) -> list[str]:
    return [json.dumps({"inputs": [row]}) for row in test_rows(dataset, limit)]
