"""Request rows for load generators: drawn from a served model's training statistics (read from its
v2 metadata), read from a file of real rows, or taken from a built-in data set's test split."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnship.errors import NnshipError

SEQ_LEN = 8  # time steps of a drawn sequence: the service takes any length up to its bound
MAX_ROWS = 1024  # rows a load test cycles through (read from a file, or drawn)
TIMEOUT_S = 10.0
BODY_CHARS = 500  # of an error answer, in a message
STATS = ("mean", "std", "min", "max")


@dataclass
class Served:
    """What a load test needs of a served model, as its v2 metadata describes it."""

    name: str
    shape: list[int]  # one row, without the batch axis; -1 marks the free time axis of a sequence
    feature_names: list[str]
    stats: dict[str, list[float]]  # mean, std, min, max: one value per feature, training split

    @property
    def sequence(self) -> bool:
        return -1 in self.shape

    @property
    def width(self) -> int:
        """The values in one row (one time step for a sequence)."""
        return math.prod(self.shape[1:] if self.sequence else self.shape)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def fetch_json(url: str, headers: dict[str, str], body: bytes | None = None) -> Any:
    """GET (or POST `body`) a URL and parse its JSON answer; any other outcome is one NnshipError
    line with the status and the start of the body."""
    request = urllib.request.Request(url, data=body, headers={"Accept": "application/json"})
    for k, v in headers.items():
        request.add_header(k, v)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")[:BODY_CHARS]
        raise NnshipError(f"{request.get_method()} {url} -> {e.code}: {text}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NnshipError(f"cannot reach {url}: {reason}") from e
    except ValueError as e:
        raise NnshipError(f"{url} did not answer JSON: {e}") from e


def model_name(host: str, headers: dict[str, str]) -> str:
    """The served model's name: from the v2 repository index where the server has one, else from
    the OpenAPI document (the `name` parameter of the v2 model routes)."""
    try:
        index = fetch_json(f"{host}/v2/repository/index", headers, b"{}")
        names = [m["name"] for m in index if isinstance(m, dict) and isinstance(m.get("name"), str)]
        if names:
            return names[0]
    except NnshipError:
        pass  # no index on this server: the OpenAPI document names the model too
    doc = fetch_json(f"{host}/docs.json", headers)
    try:
        params = doc["paths"]["/v2/models/{name}"]["get"]["parameters"]
        return next(p for p in params if p["name"] == "name")["schema"]["enum"][0]
    except (KeyError, IndexError, TypeError, StopIteration) as e:
        raise NnshipError(
            f"{host}/docs.json does not name the served model; pass --model NAME"
        ) from e


def served_model(host: str, model: str | None, headers: dict[str, str]) -> Served:
    """The model's input shape, feature names and training statistics, from GET /v2/models/{name}."""
    name = model or model_name(host, headers)
    meta = fetch_json(f"{host}/v2/models/{name}", headers)
    try:
        dims = meta["inputs"][0]["shape"][1:]  # [-1 (batch), *row]; a sequence has a -1 time axis
        params = meta["parameters"]
        served = Served(
            name=meta["name"],
            shape=[int(d) for d in dims],
            feature_names=list(params["feature_names"]),
            stats={k: list(map(float, params["feature_stats"][k])) for k in STATS},
        )
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise NnshipError(
            f"{host}/v2/models/{name}: the metadata lacks {e} (inputs[0].shape, "
            "parameters.feature_names, parameters.feature_stats)"
        ) from e
    if any(len(v) != served.width for v in served.stats.values()):
        raise NnshipError(
            f"{host}/v2/models/{name}: feature_stats hold {len(served.stats['mean'])} values "
            f"per statistic for rows of {served.width} values"
        )
    return served


def drawn_rows(
    served: Served, n: int = MAX_ROWS, seed: int = 0, seq_len: int = SEQ_LEN
) -> np.ndarray:
    """`n` rows of independent normal(mean, std) values per feature, clipped to the training
    range [min, max]; a sequence has `seq_len` steps of them."""
    s = {k: np.asarray(v, dtype=np.float64) for k, v in served.stats.items()}
    steps = (seq_len,) if served.sequence else ()
    x = np.random.default_rng(seed).normal(s["mean"], s["std"], (n, *steps, served.width))
    x = np.clip(x, s["min"], s["max"])
    return x.reshape(n, *_row_shape(served, seq_len)).astype(np.float32)


def _row_shape(served: Served, steps: int) -> list[int]:
    return [steps if d == -1 else d for d in served.shape]


def file_rows(
    path: str | Path, served: Served, target: str | None = None, limit: int = MAX_ROWS
) -> np.ndarray:
    """Up to `limit` real rows of a CSV, Parquet, JSON Lines or NPY file, shaped as the model takes
    them. CSV and Parquet: `target` names the label column to leave out; the model's feature columns
    are taken by name where the file has them all, else every remaining column in file order."""
    path = Path(path)
    kind = path.suffix.lower()
    if not path.is_file():
        raise NnshipError(f"--rows {path}: no such file")
    if target is not None and kind not in (".csv", ".parquet", ".pq"):
        raise NnshipError(f"--target is for CSV and Parquet files, not {path.name}")
    try:
        if kind in (".csv", ".parquet", ".pq"):
            flat = _table(path, served, target, limit)
        elif kind in (".jsonl", ".ndjson"):
            flat = _json_lines(path, served, limit)
        elif kind == ".npy":
            flat = np.load(path, mmap_mode="r", allow_pickle=False)[:limit]
        else:
            raise NnshipError(f"--rows {path}: use a .csv, .parquet, .jsonl or .npy file")
        x = np.asarray(flat, dtype=np.float32)
    except (OSError, ValueError, TypeError) as e:
        raise NnshipError(f"--rows {path}: cannot read it: {' '.join(str(e).split())}") from e
    if len(x) == 0:
        raise NnshipError(f"--rows {path}: holds no rows")
    if not np.isfinite(x).all():
        bad = int(np.argmax(~np.isfinite(x.reshape(len(x), -1)).all(axis=1)))
        raise NnshipError(f"--rows {path}: row {bad} holds a missing or non-finite value")
    return _shaped(x, served, path)


def _table(path: Path, served: Served, target: str | None, limit: int) -> np.ndarray:
    """The feature columns of the first `limit` rows of a CSV or Parquet file."""
    import pandas as pd
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path, nrows=limit)
    else:
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=limit), None)
        df = pd.DataFrame() if batch is None else batch.to_pandas()
    if target is not None:
        if target not in df.columns:
            raise NnshipError(f"--target {target!r} is not a column of {path}: {list(df.columns)}")
        df = df.drop(columns=[target])
    if set(served.feature_names) <= set(df.columns):
        df = df[served.feature_names]
    if df.empty:
        raise NnshipError(f"--rows {path}: holds no rows")
    text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if text:
        hint = "" if target else " (name the label column with --target)"
        raise NnshipError(f"--rows {path}: column {text[0]!r} is not numeric{hint}")
    return df.to_numpy(dtype=np.float32)


def _json_lines(path: Path, served: Served, limit: int) -> list[Any]:
    """One row per line: a (nested) list, or an object keyed by feature name (tabular models)."""
    rows: list[Any] = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if len(rows) == limit:
                break
            if not line.strip():
                continue
            value = json.loads(line)
            if isinstance(value, dict):
                missing = [n for n in served.feature_names if n not in value]
                if missing:
                    raise NnshipError(f"--rows {path}: line {number} lacks features {missing}")
                value = [value[n] for n in served.feature_names]
            rows.append(value)
    return rows


def _shaped(x: np.ndarray, served: Served, path: Path) -> np.ndarray:
    """Rows in the model's row shape; a flat row of the right number of values is reshaped (an
    image's pixels, a sequence's steps one after the other)."""
    per_row = math.prod(x.shape[1:])
    if served.sequence:
        if x.ndim == 1 + len(served.shape) and x.shape[-1] == served.width:
            return x
        if per_row % served.width == 0:
            return x.reshape(len(x), *_row_shape(served, per_row // served.width))
    elif per_row == served.width:
        return x.reshape(len(x), *served.shape)
    want = f"steps of {served.width} values" if served.sequence else f"{served.width} values"
    raise NnshipError(
        f"--rows {path}: rows of shape {list(x.shape[1:])} do not fit {served.name}, which "
        f"takes rows of {want} (shape {served.shape})"
    )


def test_rows(dataset: str, limit: int = 256) -> list:
    """Up to `limit` rows of a built-in data set's test split as nested lists (never the training
    data)."""
    from nnship.training.data import load_dataset, split

    return split(load_dataset(dataset)).x_test[:limit].tolist()


def predict_bodies(dataset: str, limit: int = 256) -> list[str]:
    return [json.dumps({"inputs": [row]}) for row in test_rows(dataset, limit)]
