"""Row-wise validation of input columns with the service's rules: a bad row is rejected with its rule,
never cast or reshaped into another value."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nnship.contracts import Manifest
from nnship.service.validation import F32_MAX, RequestError, Validator

# rule per code; 0 is a valid value (the names are the service's `type` of a rejection)
RULES = ("", "missing", "number_required", "finite_required", "float32_range")
MISSING, NUMBER, FINITE, RANGE32 = 1, 2, 3, 4
ARRAY_REQUIRED = "a line of an arrays file must be a JSON array nested as one input row"
OBJECT_REQUIRED = "a line of a records file must be a JSON object keyed by feature name"
MESSAGES = {
    MISSING: "the value is missing",
    NUMBER: "expected a number",
    FINITE: "NaN and ±Infinity are not accepted",
    RANGE32: "the value overflows float32",
}


@dataclass
class Unreadable:
    """A line of a JSON Lines file that is not JSON: rejected as a row."""

    message: str


@dataclass
class Reject:
    """One rejected row: where it is and the rule it broke."""

    file: str
    row: int
    field: str
    rule: str
    message: str

    def record(self) -> dict[str, Any]:
        """As a line of the rejects file."""
        return {
            "file": self.file,
            "row": self.row,
            "field": self.field,
            "rule": self.rule,
            "message": self.message,
        }


@dataclass
class Checked:
    """A block's valid rows as model inputs, grouped by shape (sequences of several lengths run
    apart), and its rejected rows."""

    rows: int
    valid: np.ndarray  # indices of the valid rows in the block, ascending
    groups: list[tuple[np.ndarray, np.ndarray]] = field(
        default_factory=list
    )  # (positions in valid, x)
    rejects: list[Reject] = field(default_factory=list)
    # each flat column's smallest and largest value over the block's rows, where known
    ranges: tuple[np.ndarray, np.ndarray] | None = None


def column_names(manifest: Manifest) -> list[str]:
    """The flat columns a row is read from, in the package's feature order: the feature names for
    tabular and image models, `name[t]` for each step t of a sequence model's training length."""
    names, shape = manifest.input.feature_names, manifest.input.shape
    if len(names) == math.prod(shape):
        return list(names)
    return [f"{n}[{t}]" for t in range(shape[0]) for n in names]


def _python_values(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """JSON values: numbers only (true/false are not numbers), as in the service's strict parsing."""
    out = np.zeros(len(values), dtype=np.float64)
    codes = np.zeros(len(values), dtype=np.int8)
    for i, v in enumerate(values):
        if v is None:
            codes[i] = MISSING
        elif type(v) not in (int, float):
            codes[i] = NUMBER
        else:
            try:
                out[i] = float(v)
            except OverflowError:  # an integer beyond any double
                codes[i] = RANGE32
    return out, codes


def _text_values(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Text cells (CSV, or a string column): parsed as numbers cell by cell when any is not one."""
    try:
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), np.zeros(
            len(col), dtype=np.int8
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.zeros(len(col), dtype=np.float64)
    codes = np.zeros(len(col), dtype=np.int8)
    for i, v in enumerate(col.to_pylist()):
        if v is None:
            continue
        try:
            out[i] = float(v)
        except ValueError:
            codes[i] = NUMBER
    return out, codes


def _typed_values(
    col: pa.Array | pa.ChunkedArray | list[Any],
) -> tuple[np.ndarray, np.ndarray | None]:
    """A feature column -> (float64 values, code per row for missing values and non-numbers, or
    None when there are none)."""
    if isinstance(col, list):
        return _python_values(col)
    if isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    t = col.type
    if pa.types.is_float64(t):  # the common case: read in place, no cast
        values = col.to_numpy(zero_copy_only=False)
        codes = None
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        codes = None
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        values, codes = _text_values(col)
    else:  # booleans, lists, dates, ... are not numbers; an all-null column is missing
        values = np.zeros(len(col), dtype=np.float64)
        codes = np.full(len(col), NUMBER, dtype=np.int8)
    if col.null_count:
        codes = np.zeros(len(col), dtype=np.int8) if codes is None else codes
        codes[col.is_null().to_numpy(zero_copy_only=False)] = MISSING
    return values, codes


def _value_codes(
    values: np.ndarray, codes: np.ndarray | None, bounds: tuple[float, float] | None = None
) -> np.ndarray | None:
    """Codes for the values themselves where no other rule applies: non-finite, beyond float32
    (`codes` as given, None included, when every value is a finite float32); `bounds` are the
    values' (min, max) when already known."""
    with np.errstate(invalid="ignore"):
        lo, hi = bounds or (values.min(initial=0.0), values.max(initial=0.0))  # NaN propagates
        if lo >= -F32_MAX and hi <= F32_MAX:
            return codes
        codes = np.zeros(values.shape, dtype=np.int8) if codes is None else codes
        finite = np.isfinite(values)
        codes[(codes == 0) & ~finite] = FINITE
        codes[(codes == 0) & (np.abs(np.where(finite, values, 0)) > F32_MAX)] = RANGE32
    return codes


def column_values(col: pa.Array | pa.ChunkedArray | list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """A feature column -> (float64 values, code per row: 0 valid, else the index of its rule)."""
    values, codes = _typed_values(col)
    codes = _value_codes(values, codes)
    return values, np.zeros(len(values), dtype=np.int8) if codes is None else codes


def check_columns(
    columns: list[Any], names: list[str], shape: tuple[int, ...], file: str, numbers: np.ndarray
) -> Checked:
    """Flat feature columns of one block -> the valid rows shaped (n, *shape), and the rejects
    (each row by its first bad feature, in feature order). Each column is checked as a whole and
    cast into its place in the float32 rows; codes per value are kept only for a block with a bad
    one; each column's (min, max) comes along for the range flags."""
    n = len(columns[0]) if columns else 0
    x = np.empty((n, len(columns)), dtype=np.float32)
    lows, highs = np.empty(len(columns)), np.empty(len(columns))
    codes: np.ndarray | None = None  # (rows, columns), made at the first bad value
    for j, col in enumerate(columns):
        values, col_codes = _typed_values(col)
        with np.errstate(invalid="ignore"):  # NaN propagates to both
            lows[j], highs[j] = values.min(initial=np.inf), values.max(initial=-np.inf)
        col_codes = _value_codes(values, col_codes, (lows[j], highs[j]))
        if col_codes is not None:
            codes = np.zeros((n, len(columns)), dtype=np.int8) if codes is None else codes
            codes[:, j] = col_codes
        with np.errstate(over="ignore", invalid="ignore"):  # such values are in rejected rows
            x[:, j] = values
    if codes is None or not codes.any():  # the common case: every row valid
        x = x.reshape(n, *shape)
        return Checked(n, np.arange(n), [(np.arange(n), x)], [], (lows, highs))
    bad = codes.any(axis=1)
    valid = np.flatnonzero(~bad)
    rejects = []
    for r in np.flatnonzero(bad):
        j = int(np.argmax(codes[r] > 0))
        code = int(codes[r, j])
        rejects.append(Reject(file, int(numbers[r]), names[j], RULES[code], MESSAGES[code]))
    x = x[valid].reshape(len(valid), *shape)
    return Checked(n, valid, [(np.arange(len(valid)), x)], rejects, (lows, highs))


def check_array(array: np.ndarray, file: str, numbers: np.ndarray) -> Checked:
    """Rows of an NPY/NPZ array (already of the model's row shape) checked value by value."""
    values = array.astype(np.float64, copy=False)
    n = len(values)
    flat = values.reshape(n, -1)
    nonfinite = ~np.isfinite(flat)
    big = ~nonfinite & (np.abs(np.where(nonfinite, 0, flat)) > F32_MAX)
    bad = nonfinite.any(axis=1) | big.any(axis=1)
    valid = np.flatnonzero(~bad)
    rejects = []
    for r in np.flatnonzero(bad):
        j = int(np.argmax(nonfinite[r] | big[r]))
        code = FINITE if nonfinite[r, j] else RANGE32
        at = "".join(f"[{i}]" for i in np.unravel_index(j, values.shape[1:]))
        rejects.append(Reject(file, int(numbers[r]), f"input{at}", RULES[code], MESSAGES[code]))
    x = values[valid].astype(np.float32)
    return Checked(n, valid, [(np.arange(len(valid)), x)], rejects)


def check_nested(rows: list[Any], validator: Validator, file: str, numbers: np.ndarray) -> Checked:
    """JSON arrays, one row each, nested as the model's row (the service's `inputs` rows), checked
    by the service's validator; sequences of different lengths are grouped by length."""
    by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    rejects, valid = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            rejects.append(_line_reject(row, file, int(numbers[i]), "array_required"))
            continue
        try:
            x = validator.predict_inputs([row])[0]
        except RequestError as e:
            where = "".join(f"[{p}]" for p in e.loc[2:])
            rejects.append(Reject(file, int(numbers[i]), f"input{where}", e.rule, e.message))
            continue
        by_shape.setdefault(x.shape, []).append((len(valid), x))
        valid.append(i)
    groups = [
        (np.array([p for p, _ in members]), np.stack([x for _, x in members]))
        for members in by_shape.values()
    ]
    return Checked(len(rows), np.array(valid, dtype=np.int64), groups, rejects)


def _line_reject(row: Any, file: str, number: int, rule: str) -> Reject:
    """A JSON line of the wrong kind, or one that is not JSON at all."""
    if isinstance(row, Unreadable):
        return Reject(file, number, "", "json", row.message)
    message = ARRAY_REQUIRED if rule == "array_required" else OBJECT_REQUIRED
    return Reject(file, number, "", rule, message)


def check_records(
    rows: list[Any], names: list[str], shape: tuple[int, ...], file: str, numbers: np.ndarray
) -> Checked:
    """JSON objects keyed by feature name, one row each; any other line is rejected."""
    objects = np.array([i for i, r in enumerate(rows) if isinstance(r, dict)], dtype=np.int64)
    columns = [[rows[i].get(name) for i in objects] for name in names]
    checked = check_columns(columns, names, shape, file, numbers[objects])
    others = [
        _line_reject(r, file, int(numbers[i]), "object_required")
        for i, r in enumerate(rows)
        if not isinstance(r, dict)
    ]
    rejects = sorted(checked.rejects + others, key=lambda r: r.row)
    return Checked(len(rows), objects[checked.valid], checked.groups, rejects)
