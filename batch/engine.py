"""Inference for batch jobs on the service's runtime (verified package, provider choice, IO binding on
CUDA), and the output columns: kept columns, the prediction, one probability per label, and the
features outside the training range."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from nnship.batch.rows import Checked
from nnship.numeric import softmax
from nnship.service.runtime import Runtime, load_runtime
from nnship.service.settings import Settings
from nnship.service.validation import Validator

log = logging.getLogger(__name__)

PREDICTION, OUT_OF_RANGE = "prediction", "out_of_range"
CPU_BATCH, GPU_BATCH = 1024, 8192  # rows per inference call when --batch-size is not given


def open_runtime(package: str, variant: str, threads: int) -> Runtime:
    """The service's runtime for a package directory or store tag: CUDA when it really runs."""
    return load_runtime(Settings(model=package, variant=variant, threads=threads))


def output_names(runtime: Runtime) -> list[str]:
    """The columns a job adds after the kept ones."""
    m = runtime.manifest
    probs = [f"p_{label}" for label in m.output.labels] if m.classification else []
    return [PREDICTION, *probs, OUT_OF_RANGE]


class Engine:
    """Runs a block's valid rows in calls of `batch_size` rows and builds its output table."""

    def __init__(self, runtime: Runtime, batch_size: int, validator: Validator):
        self.runtime = runtime
        self.batch_size = batch_size
        self.validator = validator
        m = runtime.manifest
        self.labels = pa.array(m.output.labels, type=pa.string())
        self.names = output_names(runtime)
        self.feature_names = pa.array(validator.feature_names, type=pa.string())
        self.width = len(m.output.labels) if m.classification else 1
        if not runtime.batch_independent:
            log.info(
                "variant %s quantizes activations per batch (%s): each row runs on its own, so its "
                "answer is the one the service gives it",
                runtime.variant,
                ", ".join(runtime.coupled_ops),
            )

    def infer(self, x: np.ndarray) -> np.ndarray:
        """(n, *shape) float32 -> (n, outputs) float32 logits, in calls of batch_size rows (one row
        per call where a row's answer would depend on its batch-mates)."""
        step = self.batch_size if self.runtime.batch_independent else 1
        outs = [self.runtime.run(x[i : i + step]) for i in range(0, len(x), step)]
        if not outs:
            return np.zeros((0, self.width), dtype=np.float32)
        return np.concatenate(outs)

    def outputs(self, checked: Checked) -> tuple[np.ndarray, np.ndarray]:
        """Logits of the valid rows (in block order), and which features each has outside the
        training range ± margin (the service's rule) as a (rows, features) mask."""
        logits = np.zeros((len(checked.valid), self.width), dtype=np.float32)
        outside = np.zeros((len(checked.valid), len(self.validator.feature_names)), dtype=bool)
        for positions, x in checked.groups:
            if not len(x):
                continue
            logits[positions] = self.infer(x)
            outside[positions] = self.validator.outside(x).any(axis=1)
        return logits, outside

    def table(self, keep: dict[str, pa.Array], logits: np.ndarray, outside: np.ndarray) -> pa.Table:
        """The output rows of one block."""
        columns: dict[str, pa.Array] = dict(keep)
        if self.runtime.manifest.classification:
            p = softmax(logits)
            columns[PREDICTION] = self.labels.take(pa.array(p.argmax(axis=1)))
            for j, name in enumerate(self.names[1:-1]):
                columns[name] = pa.array(p[:, j], type=pa.float32())
        else:
            columns[PREDICTION] = pa.array(logits[:, 0], type=pa.float32())
        rows, features = np.nonzero(outside)  # row by row, in feature order
        offsets = np.zeros(len(outside) + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=len(outside)), out=offsets[1:])
        names = self.feature_names.take(pa.array(features, type=pa.int64()))
        columns[OUT_OF_RANGE] = pa.ListArray.from_arrays(pa.array(offsets), names)
        return pa.table(columns)
