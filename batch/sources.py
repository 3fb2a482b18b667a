"""Input files streamed in blocks of a fixed number of rows: Parquet (row batches), CSV (chunked),
JSON Lines (line by line), NPY (memory-mapped) and NPZ (each member read as a stream). No reader
holds more than one block of a file in memory, except that a Parquet file's row groups may be
decoded on a pool of workers, a few at a time, where each is small enough (GROUP_BYTES)."""

from __future__ import annotations

import glob
import json
import logging
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nnship.batch.pipeline import Workers, ordered
from nnship.batch.rows import Unreadable
from nnship.errors import NnshipError

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".npy": "npy",
    ".npz": "npz",
}
log = logging.getLogger(__name__)
ARRAY_MEMBERS = ("X", "input")  # the NPZ member holding the rows (else its only one)
CSV_BLOCK_BYTES = 4 << 20
# encodings whose pages hold every value's bytes (a text column's size can be told from them); a
# dictionary, or DELTA_BYTE_ARRAY's shared prefixes, make pages far smaller than the values
VALUES_WHOLE = {"PLAIN", "RLE", "BIT_PACKED", "DELTA_LENGTH_BYTE_ARRAY"}
GROUP_BYTES = 64 << 20  # a Parquet row group decoded whole on a worker holds at most this in Arrow


@dataclass
class Spec:
    """What a row is read from: the flat feature columns and the model's row shape."""

    columns: list[str]  # flat feature columns, in the package's feature order
    shape: tuple[int, ...]
    sequence: bool  # the model takes sequences of any length (NPY/NPZ of another length pass)
    keep: list[str] = field(default_factory=list)


@dataclass
class Block:
    """Rows of one file: `kind` says how the features are held (`columns`: flat columns in feature
    order; `array`: an array of rows; `records`/`arrays`: parsed JSON lines)."""

    file: Path
    numbers: np.ndarray  # each row's number in its file (0-based data row, or line for JSON Lines)
    kind: str
    features: Any
    keep: dict[str, Any]

    @property
    def rows(self) -> int:
        return len(self.numbers)


def input_files(spec: str) -> list[Path]:
    """A file, the supported files of a folder, or the files a glob matches, sorted by name."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix.lower() in FORMATS and not p.name.startswith(".")
        )
    elif path.is_file():
        files = [path]
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    else:
        raise NnshipError(f"{spec}: no such file or folder")
    if not files:
        raise NnshipError(f"{spec}: no input files ({', '.join(FORMATS)})")
    for p in files:
        if p.suffix.lower() not in FORMATS:
            raise NnshipError(f"{p}: unsupported input format; use one of {', '.join(FORMATS)}")
    return files


def total_rows(path: Path) -> int | None:
    """The row count where the file records it (Parquet, NPY, NPZ), without reading the rows."""
    fmt = FORMATS[path.suffix.lower()]
    try:
        if fmt == "parquet":
            return pq.ParquetFile(path).metadata.num_rows
        if fmt == "npy":
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        if fmt == "npz":
            with zipfile.ZipFile(path) as zf, zf.open(_npz_rows_member(zf, path) + ".npy") as f:
                return int(_npy_header(f, path)[0][0])
    except (OSError, ValueError, pa.ArrowException, zipfile.BadZipFile, NnshipError, IndexError):
        return None
    return None


def read_blocks(path: Path, spec: Spec, rows: int, pool: Workers | None = None) -> Iterator[Block]:
    """The file's rows in blocks of `rows` (the last may be shorter); with a pool, a Parquet file's
    row groups are decoded on its workers (the same blocks, in the same order)."""
    fmt = FORMATS[path.suffix.lower()]
    if fmt == "parquet" and pool is not None:
        reader = lambda p, s, r: _parquet(p, s, r, pool)  # noqa: E731
    else:
        reader = {
            "parquet": _parquet,
            "csv": _csv,
            "jsonl": _jsonl,
            "npy": _npy,
            "npz": _npz,
        }[fmt]
    try:
        yield from reader(path, spec, rows)
    except NnshipError:
        raise
    except (OSError, ValueError, pa.ArrowException, zipfile.BadZipFile) as e:
        problem = " ".join(str(e).split())
        raise NnshipError(f"{path}: cannot read it as {fmt}: {problem}") from e


def read_block_at(path: Path, spec: Spec, rows: int, index: int) -> Block | None:
    """Block `index` of a file that allows it without reading the blocks before (Parquet by its
    row groups, NPY memory-mapped): the same rows as the index-th block `read_blocks` gives; None for
    the other formats."""
    fmt = FORMATS[path.suffix.lower()]
    start = index * rows
    if fmt == "npy":
        return next(_npy(path, spec, rows, start), None)
    if fmt != "parquet":
        return None
    pf = pq.ParquetFile(path, pre_buffer=False)
    _need(path, pf.schema_arrow.names, spec)
    stop = min(start + rows, pf.metadata.num_rows)
    if start >= stop:
        return None
    groups, first, at = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if at < stop and at + n > start:
            groups.append(g)
            first = at if first is None else first
        at += n
    columns = list(dict.fromkeys(spec.columns + spec.keep))
    table = pf.read_row_groups(groups, columns=columns, use_threads=False).slice(
        start - (first or 0), stop - start
    )
    return next(_table_blocks(path, iter([table]), spec, start), None)


# -- columnar files -------------------------------------------------------------------------------
def _need(path: Path, have: list[str], spec: Spec) -> None:
    missing = [c for c in spec.columns + spec.keep if c not in have]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise NnshipError(
            f"{path}: no column {shown} (the package's features are {', '.join(spec.columns[:8])}"
            f"{' ...' if len(spec.columns) > 8 else ''}; --keep names the others)"
        )


def _rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Record batches of any size -> tables of exactly `rows` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for b in batches:
        pending.append(b)
        count += b.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def _table_blocks(
    path: Path, tables: Iterator[pa.Table], spec: Spec, start: int = 0
) -> Iterator[Block]:
    for t in tables:
        numbers = np.arange(start, start + t.num_rows)
        start += t.num_rows
        features = [t.column(c) for c in spec.columns]
        yield Block(path, numbers, "columns", features, {k: t.column(k) for k in spec.keep})


def _parquet(path: Path, spec: Spec, rows: int, pool: Workers | None = None) -> Iterator[Block]:
    # pre_buffer caches every row group read until the reader is done: memory would grow with the file
    pf = pq.ParquetFile(path, pre_buffer=False)
    _need(path, pf.schema_arrow.names, spec)
    columns = list(dict.fromkeys(spec.columns + spec.keep))
    meta = pf.metadata
    groups = range(meta.num_row_groups)
    if pool is not None and len(groups) > 1 and _groups_fit(meta, pf.schema_arrow, columns):
        # each worker decodes whole row groups on its own handle (the footer parsed once, here)
        def group(g: int) -> pa.Table:
            with pq.ParquetFile(path, metadata=meta, pre_buffer=False) as f:
                return f.read_row_group(g, columns=columns, use_threads=False)

        tables = ordered(pool, group, groups)
        batches = (b for t in tables for b in t.to_batches())
    else:
        # one decoding thread: the job already overlaps reading with inference and writing, and
        # Arrow's thread pool would spend more CPU handing columns around than it saves (half the
        # CPU per row)
        batches = pf.iter_batches(batch_size=rows, columns=columns, use_threads=False)
    yield from _table_blocks(path, _rechunk(batches, rows), spec)


def _groups_fit(meta: pq.FileMetaData, schema: pa.Schema, columns: list[str]) -> bool:
    """Whether every row group's `columns`, decoded, are known to fit in GROUP_BYTES (then a few
    groups can be held at once)."""
    sizes = (decoded_bytes(meta.row_group(g), schema, columns) for g in range(meta.num_row_groups))
    return all(size is not None and size <= GROUP_BYTES for size in sizes)


def decoded_bytes(group: pq.RowGroupMetaData, schema: pa.Schema, columns: list[str]) -> int | None:
    """The bytes a row group's `columns` take in Arrow once decoded, from the footer alone; None
    when the footer cannot tell.

    Parquet's own sizes are those of the encoded pages, which dictionary and run-length encoding
    make far smaller than the values (a column of mostly zeros: 60x). A fixed-width column takes
    its width times the rows; a text column whose pages hold every value's bytes (plain or
    delta-length encoded), its uncompressed pages plus Arrow's offsets or views; a text column
    with a dictionary or prefix-shared values, or a nested one, cannot be told."""
    chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    rows, total = group.num_rows, 0
    for name in columns:
        kind = schema.field(name).type
        if not (pa.types.is_dictionary(kind) or pa.types.is_nested(kind)):
            try:
                total += (rows * kind.bit_width + 7) // 8 + (rows + 7) // 8  # values, validity
                continue
            except ValueError:  # text, binary: variable width
                pass
        chunk = chunks.get(name)
        if chunk is None or chunk.has_dictionary_page or pa.types.is_nested(kind):
            return None
        if not set(chunk.encodings) <= VALUES_WHOLE:  # pages smaller than their values
            return None
        total += chunk.total_uncompressed_size + _offset_bytes(kind) * (rows + 1) + (rows + 7) // 8
    return total


def _offset_bytes(kind: pa.DataType) -> int:
    """Arrow's bytes per value beside a text or binary value's own bytes."""
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        return 16
    if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        return 8
    return 4


def _csv(path: Path, spec: Spec, rows: int) -> Iterator[Block]:
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    with pacsv.open_csv(path, read_options=read) as probe:
        _need(path, probe.schema.names, spec)
    convert = pacsv.ConvertOptions(
        include_columns=list(dict.fromkeys(spec.columns + spec.keep)),
        # features as text, parsed cell by cell where needed: one bad cell rejects its row, never the file
        column_types={c: pa.string() for c in spec.columns},
        strings_can_be_null=True,
        null_values=[""],
    )
    with pacsv.open_csv(path, read_options=read, convert_options=convert) as reader:
        yield from _table_blocks(path, _rechunk(iter(reader), rows), spec)


# -- JSON Lines ------------------------------------------------------------------------------------
def _jsonl(path: Path, spec: Spec, rows: int) -> Iterator[Block]:
    """One JSON value per line (blank lines are not rows): objects keyed by feature name, or arrays
    nested as one input row; the file's first readable line says which."""
    kind = None
    items: list[Any] = []
    numbers: list[int] = []
    with open(path, "rb") as f:
        for number, line in enumerate(f):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                item = Unreadable(f"not JSON: {' '.join(str(e).split())}")
            if kind is None and isinstance(item, dict | list):
                kind = "records" if isinstance(item, dict) else "arrays"
                if kind == "arrays" and spec.keep:
                    raise NnshipError(
                        f"{path}: --keep needs JSON objects (records); this file holds arrays"
                    )
            items.append(item)
            numbers.append(number)
            if len(items) == rows:
                yield _json_block(path, items, numbers, kind, spec)
                items, numbers = [], []
    if items:
        yield _json_block(path, items, numbers, kind, spec)


def _json_block(
    path: Path, items: list[Any], numbers: list[int], kind: str | None, spec: Spec
) -> Block:
    keep = {k: [i.get(k) if isinstance(i, dict) else None for i in items] for k in spec.keep}
    return Block(path, np.array(numbers, dtype=np.int64), kind or "records", items, keep)


# -- NumPy arrays ----------------------------------------------------------------------------------
def row_shape(path: Path, shape: tuple[int, ...], stored: tuple[int, ...], spec: Spec) -> tuple:
    """The model row shape an array's rows are read as: its own, the flat one, or (sequence models)
    another sequence length; anything else is refused."""
    if stored == spec.shape:
        return stored
    if len(stored) == 1 and stored[0] == math.prod(spec.shape):
        return spec.shape
    if spec.sequence and len(stored) == len(spec.shape) and stored[1:] == spec.shape[1:]:
        return stored  # its sequence length is checked against the service's limit per row
    raise NnshipError(
        f"{path}: rows of shape {list(stored)} do not fit the model's input {list(spec.shape)} "
        f"(or {math.prod(spec.shape)} flat values)"
    )


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in "iuf":
        raise NnshipError(f"{path}: values of dtype {dtype} are not numbers (int or float needed)")


def _npy(path: Path, spec: Spec, rows: int, first: int = 0) -> Iterator[Block]:
    if spec.keep:
        raise NnshipError(f"{path}: --keep needs named columns; an NPY file holds one array")
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    _check_dtype(path, array.dtype)
    if array.ndim < 2 and not (array.ndim == 1 and math.prod(spec.shape) == 1):
        raise NnshipError(f"{path}: an array of shape {list(array.shape)} holds no rows")
    shape = row_shape(path, array.shape, array.shape[1:] or (1,), spec)
    for start in range(first, len(array), rows):
        part = np.asarray(array[start : start + rows]).reshape(-1, *shape)
        numbers = np.arange(start, start + len(part))
        yield Block(path, numbers, "array", part, {})


def _npy_header(f: IO[bytes], path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    """The shape, dtype and Fortran order of an NPY stream, leaving it at the first value."""
    major, _ = np.lib.format.read_magic(f)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read(f)
    if dtype.hasobject:
        raise NnshipError(f"{path}: object arrays are refused (they would need pickle)")
    return shape, dtype, fortran and len(shape) > 1


def _npz_rows_member(zf: zipfile.ZipFile, path: Path) -> str:
    names = [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
    chosen = next((n for n in ARRAY_MEMBERS if n in names), names[0] if len(names) == 1 else None)
    if chosen is None:
        raise NnshipError(
            f"{path}: no array named {' or '.join(ARRAY_MEMBERS)} among {', '.join(names) or 'none'}"
        )
    return chosen


def _read_rows(f: IO[bytes], dtype: np.dtype, shape: tuple[int, ...], n: int) -> np.ndarray:
    size = dtype.itemsize * math.prod(shape) * n
    data = f.read(size)
    return np.frombuffer(data, dtype=dtype).reshape(n, *shape)


def _npz(path: Path, spec: Spec, rows: int) -> Iterator[Block]:
    with zipfile.ZipFile(path) as zf:
        name = _npz_rows_member(zf, path)
        streams = {k: zf.open(k + ".npy") for k in [name, *spec.keep]}
        try:
            headers = {k: _npy_header(f, path) for k, f in streams.items()}
        except KeyError as e:
            raise NnshipError(f"{path}: no array {e} to keep") from e
        (n, *stored), dtype, fortran = headers[name]
        _check_dtype(path, dtype)
        for k in spec.keep:
            if len(headers[k][0]) != 1 or headers[k][0][0] != n:
                raise NnshipError(f"{path}: --keep {k}: needs a 1-D array of {n} values")
        shape = row_shape(path, (n, *stored), tuple(stored) or (1,), spec)
        whole = None
        if fortran:  # column-major values cannot be streamed by rows: this member is read whole
            log.warning("%s: array %s is in Fortran order and is read whole", path, name)
            whole = np.lib.format.read_array(zf.open(name + ".npy"), allow_pickle=False)
        for start in range(0, n, rows):
            m = min(rows, n - start)
            if whole is not None:
                part = np.ascontiguousarray(whole[start : start + m]).reshape(m, *shape)
            else:
                part = _read_rows(streams[name], dtype, tuple(stored), m).reshape(m, *shape)
            keep = {k: pa.array(_read_rows(streams[k], headers[k][1], (), m)) for k in spec.keep}
            yield Block(path, np.arange(start, start + m), "array", part, keep)
