"""Data sets: the built-in ones and user files (CSV, Parquet, NPZ), their splits and input statistics."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnship.errors import NnshipError

log = logging.getLogger(__name__)

BUILTIN = ("digits", "digits-seq", "breast-cancer", "wine", "iris", "diabetes")
FILE_SUFFIXES = (".csv", ".parquet", ".pq", ".npz")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
SPLIT_SEED = 0  # fixed by contract: the split never depends on the training seed


@dataclass
class Dataset:
    name: str  # a built-in name, or a user file's name with its suffix (never a built-in name)
    x: np.ndarray  # (N, *input_shape) float32
    y: np.ndarray  # (N,) int64 class index, or float32 target
    task: str  # classification | regression
    layout: str  # tabular | image | sequence
    feature_names: list[str]
    labels: list[str] = field(default_factory=list)  # class names, classification only

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.task == "classification" else 1

    def fingerprint(self) -> str:
        """sha256 over shapes, dtypes and bytes of X and y."""
        h = hashlib.sha256()
        for a in (self.x, self.y):
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _builtin(name: str) -> Dataset:
    from sklearn import datasets as skd

    if name in ("digits", "digits-seq"):
        d = skd.load_digits()
        labels = [str(c) for c in d.target_names]
        if name == "digits":
            x = d.images[:, None].astype(np.float32)  # (N, 1, 8, 8)
            feats = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
            return Dataset(
                name, x, d.target.astype(np.int64), "classification", "image", feats, labels
            )
        x = d.images.astype(np.float32)  # (N, 8 steps, 8 features): one image row per step
        feats = [f"col_{c}" for c in range(8)]
        return Dataset(
            name, x, d.target.astype(np.int64), "classification", "sequence", feats, labels
        )
    loader = {
        "breast-cancer": skd.load_breast_cancer,
        "wine": skd.load_wine,
        "iris": skd.load_iris,
        "diabetes": skd.load_diabetes,
    }[name]
    d = loader()
    feats = [str(f) for f in d.feature_names]
    if name == "diabetes":
        return Dataset(
            name,
            d.data.astype(np.float32),
            d.target.astype(np.float32),
            "regression",
            "tabular",
            feats,
        )
    labels = [str(c) for c in d.target_names]
    return Dataset(
        name,
        d.data.astype(np.float32),
        d.target.astype(np.int64),
        "classification",
        "tabular",
        feats,
        labels,
    )


def _infer_task(y: np.ndarray) -> str:
    if y.dtype.kind in "OUSb":
        return "classification"
    uniq = np.unique(y)
    integral = np.all(np.isfinite(y)) and np.all(np.mod(y, 1) == 0)
    return (
        "classification"
        if integral and len(uniq) <= max(2, min(50, len(y) // 10))
        else "regression"
    )


def _encode_target(y: np.ndarray, task: str, where: str) -> tuple[np.ndarray, list[str]]:
    if task == "regression":
        if y.dtype.kind not in "iuf":
            raise NnshipError(f"{where}: regression target must be numeric, got dtype {y.dtype}")
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise NnshipError(f"{where}: target contains NaN or infinite values")
        return y.astype(np.float32), []
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise NnshipError(f"{where}: target contains NaN or infinite values")
    if y.dtype.kind == "O" and any(v is None or v != v for v in y):
        raise NnshipError(f"{where}: target contains missing values")
    classes, idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise NnshipError(f"{where}: classification needs at least 2 classes, found {len(classes)}")
    labels = [
        str(int(c)) if isinstance(c, float | np.floating) and float(c).is_integer() else str(c)
        for c in classes
    ]
    return idx.astype(np.int64), labels


def _table(path: Path, target: str | None, task: str) -> Dataset:
    import pandas as pd

    if not target:
        raise NnshipError(f"{path.name}: a CSV or Parquet file needs --target COLUMN")
    try:
        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError as e:
        raise NnshipError(f"{path.name}: the file is empty") from e
    except Exception as e:  # pandas/pyarrow raise many types for a malformed file
        raise NnshipError(f"{path.name}: cannot read as {path.suffix[1:]}: {e}") from e
    if df.empty:
        raise NnshipError(f"{path.name}: the file has no data rows")
    if target not in df.columns:
        raise NnshipError(
            f"{path.name}: no target column {target!r}; columns: {', '.join(map(str, df.columns))}"
        )
    feats = df.drop(columns=[target])
    if feats.shape[1] == 0:
        raise NnshipError(f"{path.name}: no feature columns besides the target {target!r}")
    bad = [
        str(c)
        for c in feats.columns
        if not pd.api.types.is_numeric_dtype(feats[c]) or pd.api.types.is_bool_dtype(feats[c])
    ]
    if bad:
        raise NnshipError(f"{path.name}: non-numeric feature column(s): {', '.join(bad)}")
    x = feats.to_numpy(dtype=np.float64)
    nan_cols = [
        str(c) for c, m in zip(feats.columns, ~np.isfinite(x).all(axis=0), strict=True) if m
    ]
    if nan_cols:
        raise NnshipError(
            f"{path.name}: NaN or infinite values in column(s): {', '.join(nan_cols)}"
        )
    y_raw = df[target].to_numpy()
    if y_raw.dtype.kind == "f" and not np.all(np.isfinite(y_raw)):
        raise NnshipError(f"{path.name}: NaN or infinite values in target column {target!r}")
    task = _infer_task(y_raw) if task == "auto" else task
    y, labels = _encode_target(y_raw, task, path.name)
    return Dataset(
        path.name,
        _as_float32(x, path.name),
        y,
        task,
        "tabular",
        [str(c) for c in feats.columns],
        labels,
    )


def _npz(path: Path, task: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise NnshipError(
            f"{path.name}: not a plain NPZ (object arrays need pickle, which nnship never loads)"
        ) from e
    except Exception as e:
        raise NnshipError(f"{path.name}: cannot read as NPZ: {e}") from e
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise NnshipError(
            f"{path.name}: missing array(s) {', '.join(missing)}; found: {', '.join(arrays) or 'none'}"
        )
    x, y = arrays["X"], arrays["y"]
    if x.ndim < 2 or x.ndim > 4:
        raise NnshipError(
            f"{path.name}: X must be (N, F), (N, T, F) or (N, C, H, W), got shape {x.shape}"
        )
    if y.ndim != 1:
        raise NnshipError(f"{path.name}: y must be one-dimensional, got shape {y.shape}")
    if len(x) != len(y):
        raise NnshipError(f"{path.name}: X has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise NnshipError(f"{path.name}: X and y are empty")
    if x.dtype.kind not in "iuf":
        raise NnshipError(f"{path.name}: X must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise NnshipError(f"{path.name}: X contains NaN or infinite values")
    task = _infer_task(y) if task == "auto" else task
    y, labels = _encode_target(y, task, path.name)
    layout = {2: "tabular", 3: "sequence", 4: "image"}[x.ndim]
    nfeat = x.shape[-1] if layout == "sequence" else int(np.prod(x.shape[1:]))
    return Dataset(
        path.name,
        _as_float32(x, path.name),
        y,
        task,
        layout,
        [f"x{i}" for i in range(nfeat)],
        labels,
    )


def _as_float32(x: np.ndarray, where: str) -> np.ndarray:
    big = np.abs(x) > np.finfo(np.float32).max
    if np.any(big):
        raise NnshipError(f"{where}: values beyond float32 range")
    return x.astype(np.float32)


def load_dataset(name: str, target: str | None = None, task: str = "auto") -> Dataset:
    """A built-in data set by name, or a CSV / Parquet (with target) / NPZ (X, y) file."""
    if name in BUILTIN:
        return _builtin(name)
    path = Path(name)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise NnshipError(
            f"unknown dataset {name!r}: not a built-in ({', '.join(BUILTIN)}) "
            f"nor a {', '.join(FILE_SUFFIXES)} file"
        )
    if not path.is_file():
        raise NnshipError(f"dataset file {name} does not exist")
    if path.stat().st_size == 0:
        raise NnshipError(f"{path.name}: the file is empty")
    if path.suffix.lower() == ".npz":
        ds = _npz(path, task)
    else:
        ds = _table(path, target, task)
    if len(ds.x) < 10:
        raise NnshipError(f"{path.name}: {len(ds.x)} rows are too few to split into train/val/test")
    return ds


def split(ds: Dataset, test_size: float = 0.2, val_size: float = 0.15) -> Splits:
    """80/20 train/test (stratified for classification, seed 0), then validation carved from train."""
    from sklearn.model_selection import train_test_split

    strat = ds.task == "classification"
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            ds.x,
            ds.y,
            test_size=test_size,
            random_state=SPLIT_SEED,
            stratify=ds.y if strat else None,
        )
        x_tr, x_va, y_tr, y_va = train_test_split(
            x_tr,
            y_tr,
            test_size=val_size,
            random_state=SPLIT_SEED,
            stratify=y_tr if strat else None,
        )
    except ValueError as e:
        raise NnshipError(f"{ds.name}: cannot split into train/validation/test: {e}") from e
    return Splits(x_tr, y_tr, x_va, y_va, x_te, y_te)


def input_stats(ds: Dataset, x_train: np.ndarray) -> list[dict[str, Any]]:
    """Per-feature min/max/mean/std/quantiles of the training split (sequence: per last-axis feature)."""
    z = (
        x_train.reshape(-1, x_train.shape[-1])
        if ds.layout == "sequence"
        else x_train.reshape(len(x_train), -1)
    )
    z = z.astype(np.float64)
    qs = np.quantile(z, QUANTILES, axis=0)
    out = []
    for i, name in enumerate(ds.feature_names):
        out.append(
            {
                "name": name,
                "min": float(z[:, i].min()),
                "max": float(z[:, i].max()),
                "mean": float(z[:, i].mean()),
                "std": float(z[:, i].std()),
                "quantiles": {
                    f"q{int(q * 100):02d}": float(qs[j, i]) for j, q in enumerate(QUANTILES)
                },
            }
        )
    return out
