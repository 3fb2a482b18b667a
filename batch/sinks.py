"""Output parts (Parquet, CSV or JSON Lines by extension), rejects parts, and the final output: a
folder of parts, or one file assembled from them; each file is written under a temporary name and
renamed into place complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nnship.errors import NnshipError

OUTPUT_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
EXTENSION = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl", "arrow": ".arrow"}
LIST_SEPARATOR = ";"  # CSV holds no lists: flagged features are joined with it


def output_format(output: Path, fmt: str | None) -> tuple[str, bool]:
    """(format, whether the output is one file): by the output's extension, else a folder of parts
    in `fmt` (Parquet by default)."""
    by_ext = OUTPUT_FORMATS.get(output.suffix.lower())
    if by_ext is not None:
        if fmt is not None and fmt != by_ext:
            raise NnshipError(
                f"--output {output}: the extension says {by_ext}, --format says {fmt}"
            )
        return by_ext, True
    return fmt or "parquet", False


def part_format(fmt: str, single: bool) -> str:
    """The staging parts' format: the output's own, except Arrow IPC files (written and read back
    as they are held in memory) for parts that one Parquet file is assembled from, so that each
    row is encoded as Parquet once."""
    return "arrow" if single and fmt == "parquet" else fmt


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """How output Parquet is written, each row encoded cheaply: dictionary pages for text (labels,
    flagged feature names, kept text), plain pages for numbers (a dictionary of unique values is
    built only to be dropped); min/max statistics for the columns neither text nor floating point
    (kept identifiers, which readers filter on); Snappy pages."""
    text, other = [], []
    for f in schema:
        t = f.type.value_type if pa.types.is_list(f.type) else f.type
        name = f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
            text.append(name)
        elif not pa.types.is_floating(t):
            other.append(name)
    return {"compression": "snappy", "use_dictionary": text, "write_statistics": other}


def read_part(path: Path, schema_only: bool = False) -> pa.Table | pa.Schema:
    """A staging part's rows (or only its schema), by its extension (Arrow IPC or Parquet)."""
    if path.suffix != EXTENSION["arrow"]:
        return pq.read_schema(path) if schema_only else pq.read_table(path)
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        return reader.schema if schema_only else reader.read_all()


def _replaced(path: Path, write) -> Path:
    """write(tmp) then rename tmp over path (the staging folder is ours: no temp name clashes)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def _csv_ready(table: pa.Table) -> pa.Table:
    """List columns joined into text: CSV has no lists."""
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type):
            joined = pc.binary_join(table.column(i), LIST_SEPARATOR)
            table = table.set_column(i, f.name, pc.fill_null(joined, ""))
    return table


def _jsonl_lines(table: pa.Table) -> Iterable[str]:
    for row in table.to_pylist():
        yield json.dumps(row, default=str, allow_nan=False, ensure_ascii=False) + "\n"


def encode(table: pa.Table, fmt: str, header: bool = True) -> pa.Buffer | bytes:
    """One part's bytes in its format."""
    if fmt == "jsonl":
        return "".join(_jsonl_lines(table)).encode("utf-8")
    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, sink, **parquet_options(table.schema))
    elif fmt == "arrow":
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
    else:
        options = pacsv.WriteOptions(include_header=header)
        pacsv.write_csv(_csv_ready(table), sink, write_options=options)
    return sink.getvalue()


def write_table(table: pa.Table, path: Path, fmt: str, header: bool = True) -> str:
    """One part, encoded in memory and renamed into place complete; the sha256 of its bytes."""
    data = encode(table, fmt, header)
    digest = hashlib.sha256(data).hexdigest()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _replaced(path, write)
    return digest


def write_rejects(records: list[dict[str, Any]], path: Path) -> Path:
    """One part of the rejects file (JSON Lines)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    return _replaced(path, write)


def concatenate(parts: list[Path], path: Path) -> None:
    """Files joined byte for byte into `path` (the rejects file's parts)."""
    with open(path, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)


def csv_header(names: list[str]) -> bytes:
    """The header line of a CSV file with these columns."""
    sink = pa.BufferOutputStream()
    pacsv.write_csv(pa.table({n: pa.array([], pa.string()) for n in names}), sink)
    return sink.getvalue().to_pybytes()


class Joined:
    """One output file built from the parts as each completes: Parquet parts become its row groups
    (in the part files' types, so that a resumed job, which re-adds its completed parts from their
    files, writes the same bytes), CSV and JSON Lines parts are appended byte for byte after the
    CSV header."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._file = None

    def add(self, part: Path, columns: list[str], table: pa.Table | None = None) -> None:
        """Append a completed part (its columns name the CSV header); a Parquet part's rows come
        from `table` when given (the part just written), else from the file."""
        if self.fmt == "parquet":
            if self._parquet is None:
                self._schema = read_part(
                    part, schema_only=True
                )  # the types as a part file holds them
                self._parquet = pq.ParquetWriter(
                    self.path, self._schema, **parquet_options(self._schema)
                )
            table = read_part(part) if table is None else table
            try:  # one chunk per column: the bytes depend on the values alone
                self._parquet.write_table(table.cast(self._schema).combine_chunks())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise NnshipError(
                    f"{part.name}: its kept columns' types differ from the first part's "
                    f"({' '.join(str(e).split())}); write to a folder instead"
                ) from e
            return
        if self._file is None:
            self._file = open(self.path, "wb")  # noqa: SIM115 (open across parts, closed by close())
            if self.fmt == "csv":
                self._file.write(csv_header(columns))
        with open(part, "rb") as f:
            shutil.copyfileobj(f, self._file, 1 << 20)

    def close(self) -> Path:
        """The complete file (a CSV header alone, or an empty file, when no part came)."""
        if self._parquet is not None:
            self._parquet.close()
        elif self._file is not None:
            self._file.close()
        return self.path
