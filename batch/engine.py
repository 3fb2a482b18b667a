"""Inference for batch jobs on the service's runtime (verified package, provider choice, IO binding on
CUDA), and the output columns: kept columns, the prediction, one probability per label, and the
features outside the training range."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from nnship.batch.rows import Checked
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

    def logits(self, checked: Checked) -> np.ndarray:
        """Logits of the valid rows, in block order."""
        if len(checked.groups) == 1 and len(checked.groups[0][0]) == len(checked.valid):
            return self.infer(checked.groups[0][1])  # one group holds every valid row, in order
        logits = np.zeros((len(checked.valid), self.width), dtype=np.float32)
        for positions, x in checked.groups:
            if len(x):
                logits[positions] = self.infer(x)
        return logits

    def flags(self, checked: Checked) -> np.ndarray | None:
        """Which features each valid row has outside the training range ± margin (the service's
        rule) as a (rows, features) mask; None when no value of the block is outside."""
        low, high = self.validator.low, self.validator.high
        if checked.ranges is not None:  # flat columns' (min, max) -> each feature's
            lo, hi = (r.reshape(-1, len(low)) for r in checked.ranges)
            with np.errstate(over="ignore", invalid="ignore"):  # NaN, inf: then row by row
                lo, hi = lo.min(axis=0).astype(np.float32), hi.max(axis=0).astype(np.float32)
            groups = [(lo, hi)]  # float32 rounding is monotone: these are the inputs' bounds
        else:
            shaped = [x.reshape(-1, len(low)) for _, x in checked.groups if len(x)]
            groups = [(z.min(axis=0), z.max(axis=0)) for z in shaped]
        if all((lo >= low).all() and (hi <= high).all() for lo, hi in groups):
            return None
        outside = np.zeros((len(checked.valid), len(low)), dtype=bool)
        for positions, x in checked.groups:
            if len(x):
                bad = self.validator.outside(x)  # (rows, steps or 1, features)
                outside[positions] = bad[:, 0] if bad.shape[1] == 1 else bad.any(axis=1)
        return outside

    def table(
        self, keep: dict[str, pa.Array], logits: np.ndarray, flags: np.ndarray | None
    ) -> pa.Table:
        """The output rows of one block; the out_of_range lists are built from the flagged rows'
        positions alone."""
        columns: dict[str, pa.Array] = dict(keep)
        if self.runtime.manifest.classification:
            p = probabilities(logits)
            columns[PREDICTION] = self.labels.take(pa.array(p.argmax(axis=1)))
            for j, name in enumerate(self.names[1:-1]):
                columns[name] = pa.array(p[:, j], type=pa.float32())
        else:
            columns[PREDICTION] = pa.array(logits[:, 0], type=pa.float32())
        offsets = np.zeros(len(logits) + 1, dtype=np.int32)
        features = np.zeros(0, dtype=np.int64)
        if flags is not None:  # row by row, in feature order
            rows, features = np.divmod(np.flatnonzero(flags.reshape(-1)), flags.shape[1])
            np.cumsum(np.bincount(rows, minlength=len(logits)), out=offsets[1:])
        names = self.feature_names.take(pa.array(features, type=pa.int64()))
        columns[OUT_OF_RANGE] = pa.ListArray.from_arrays(pa.array(offsets), names)
        return pa.table(columns)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """nnship.numeric.softmax, value for value, with each row's maximum taken column by column
    (a maximum is exact in any order; a reduction over a few values per row is slow)."""
    top = logits[:, 0].copy()
    for j in range(1, logits.shape[1]):
        np.maximum(top, logits[:, j], out=top)
    e = np.exp(logits - top[:, None])
    return e / e.sum(axis=1, keepdims=True)
