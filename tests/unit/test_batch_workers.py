"""Batch jobs' workers: the ordered pool map, Parquet row groups decoded on workers, and whole jobs
with several workers giving the bytes one worker gives (tiny linear package, no training)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nnship.batch import pipeline, sources
from nnship.batch.job import Options, predict, staging_dir
from nnship.batch.pipeline import default_workers, ordered, worker_pool
from nnship.batch.sources import Spec, read_blocks
from nnship.errors import NnshipError
from tests.batchpkg import linear_package

FEATURES = ["f0", "f1", "f2"]


def rows(n: int, seed: int = 0) -> pd.DataFrame:
    x = np.random.default_rng(seed).uniform(0, 10, (n, 3))
    df = pd.DataFrame(x, columns=FEATURES)
    df.insert(0, "id", np.arange(n))
    return df


def test_ordered_gives_results_in_order_with_a_bounded_number_in_flight():
    pool = worker_pool(3)
    running, most, lock = 0, 0, threading.Lock()

    def slow(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002 * ((7 * i) % 5))  # later items often finish first
        with lock:
            running -= 1
        return i * i

    submitted = []

    def items():
        for i in range(40):
            submitted.append(i)
            yield i

    got = []
    for value in ordered(pool, slow, items()):
        got.append(value)
        # never more than `ahead` items taken beyond those given back
        assert len(submitted) - len(got) <= pool.ahead - 1
    pool.shutdown()
    assert got == [i * i for i in range(40)]
    assert 1 < most <= 3


def test_ordered_raises_a_calls_error_in_its_turn_and_cancels_the_rest():
    pool = worker_pool(2)
    began = []

    def work(i: int) -> int:
        began.append(i)
        if i == 3:
            raise ValueError("item 3 is bad")
        time.sleep(0.01)
        return i

    got = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for value in ordered(pool, work, range(100)):
            got.append(value)
    pool.shutdown(wait=True)
    assert got == [0, 1, 2]  # the items before the failing one, in order
    assert max(began) < 3 + pool.ahead + 1  # the rest was never begun


def test_ordered_gives_the_results_before_an_error_of_the_items_themselves():
    pool = worker_pool(3)

    def items():
        yield from range(6)
        raise OSError("the seventh item cannot be read")

    got = []
    with pytest.raises(OSError, match="seventh"):
        for value in ordered(pool, lambda i: time.sleep(0.01 * (6 - i)) or -i, items()):
            got.append(value)
    pool.shutdown()
    assert got == [0, -1, -2, -3, -4, -5]  # every item read before it, as without a pool


def test_default_workers_are_the_cores_inference_leaves(monkeypatch):
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 16)
    assert default_workers(1) == 8  # at most MAX_WORKERS
    assert default_workers(12) == 4
    assert default_workers(0) == 1  # ONNX Runtime takes every core
    assert default_workers(16) == 1
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    assert default_workers(1) == 1
    assert worker_pool(1) is None


def _same_blocks(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.numbers.tolist() == y.numbers.tolist()
        for u, v in zip(
            x.features + list(x.keep.values()), y.features + list(y.keep.values()), strict=True
        ):
            assert u.equals(v)


@pytest.mark.parametrize("group_rows", [130, 300, 1000, 5000])
def test_row_groups_decoded_on_workers_give_the_streamed_blocks(tmp_path, group_rows):
    table = pa.Table.from_pandas(rows(4321), preserve_index=False)
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=group_rows)
    spec = Spec(FEATURES, (3,), False, ["id"])
    pool = worker_pool(3)
    try:
        for part in (1, 299, 300, 4321, 5000):
            streamed = list(read_blocks(tmp_path / "a.parquet", spec, part))
            pooled = list(read_blocks(tmp_path / "a.parquet", spec, part, pool))
            _same_blocks(streamed, pooled)
    finally:
        pool.shutdown()


def test_row_groups_too_large_to_decode_whole_are_streamed(tmp_path, monkeypatch):
    table = pa.Table.from_pandas(rows(3000), preserve_index=False)
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=1000)
    decoded = []
    real = pq.ParquetFile.read_row_group

    def counting(self, *args, **kw):
        decoded.append(args[0])
        return real(self, *args, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    spec = Spec(FEATURES, (3,), False, ["id"])
    pool = worker_pool(2)
    try:
        pooled = list(read_blocks(tmp_path / "a.parquet", spec, 700, pool))
        assert sorted(decoded) == [0, 1, 2]  # small groups: each decoded whole on a worker
        decoded.clear()
        monkeypatch.setattr(sources, "GROUP_BYTES", 1000)  # now each group is too large
        streamed = list(read_blocks(tmp_path / "a.parquet", spec, 700, pool))
        assert decoded == []
    finally:
        pool.shutdown()
    _same_blocks(pooled, streamed)


def test_a_groups_decoded_size_is_told_from_its_columns_not_its_encoded_pages(tmp_path):
    n = 50_000
    sparse = np.zeros(n)
    sparse[::1000] = 1.0  # mostly one value: dictionary and run-length pages of a few kB
    table = pa.table(
        {
            "f0": sparse,
            "flag": pa.array(np.arange(n) % 7 == 0),
            "name": pa.array([f"row-{i:08d}" for i in range(n)]),
            "kind": pa.array(["a", "b"] * (n // 2)),
        }
    )
    plain = tmp_path / "plain.parquet"
    pq.write_table(table, plain, use_dictionary=["f0", "kind"])  # name plain
    meta = pq.ParquetFile(plain).metadata
    schema = pq.ParquetFile(plain).schema_arrow
    group = meta.row_group(0)
    assert group.column(0).total_uncompressed_size < n * 8 / 10  # pages say little of the values
    read = pq.read_table(plain)
    for cols in (["f0"], ["f0", "flag"], ["f0", "flag", "name"]):
        estimate = sources.decoded_bytes(group, schema, cols)
        decoded = read.select(cols).nbytes
        assert decoded <= estimate <= 1.25 * decoded, (cols, estimate, decoded)
    assert sources.decoded_bytes(group, schema, ["f0", "kind"]) is None  # cannot be told


@pytest.mark.parametrize(
    ("column", "encoding"),
    [
        (pa.array([f"user/{i:012d}" for i in range(50_000)]), "PLAIN"),
        (pa.array([f"user/{i:012d}" for i in range(50_000)]), "DELTA_LENGTH_BYTE_ARRAY"),
        (pa.array([f"user/{i:012d}" for i in range(50_000)]), "DELTA_BYTE_ARRAY"),
        (pa.array(["x"] * 50_000, type=pa.string_view()), "PLAIN"),  # 16 bytes a view
        (pa.array([None] * 49_990 + ["y"] * 10, type=pa.large_string()), "PLAIN"),  # offsets
    ],
)
def test_a_text_columns_size_is_never_under_told(tmp_path, column, encoding):
    path = tmp_path / "t.parquet"
    table = pa.table({"id": column})
    pq.write_table(table, path, use_dictionary=False, column_encoding={"id": encoding})
    f = pq.ParquetFile(path)
    estimate = sources.decoded_bytes(f.metadata.row_group(0), f.schema_arrow, ["id"])
    decoded = f.read().column("id").nbytes
    if encoding == "DELTA_BYTE_ARRAY":  # shared prefixes: pages far smaller than the values
        assert estimate is None
    else:
        assert decoded <= estimate <= 1.5 * decoded, (estimate, decoded)  # never less, not far more


def test_groups_that_decode_past_the_limit_are_streamed_however_small_their_pages(
    tmp_path, monkeypatch
):
    n = 40_000
    sparse = np.zeros((n, 3))
    sparse[::500] = 1.0
    path = tmp_path / "a.parquet"
    pq.write_table(
        pa.table({c: sparse[:, i] for i, c in enumerate(FEATURES)}), path, row_group_size=n // 4
    )
    group = pq.ParquetFile(path).metadata.row_group(0)
    decoded = (n // 4) * 3 * 8
    assert group.total_byte_size < decoded / 10
    monkeypatch.setattr(sources, "GROUP_BYTES", decoded // 2)  # the pages fit; the values do not
    whole = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, g, **kw: whole.append(g) or real(self, g, **kw),
    )
    pool = worker_pool(2)
    try:
        pooled = list(read_blocks(path, Spec(FEATURES, (3,), False), 3000, pool))
        assert whole == []
        monkeypatch.setattr(sources, "GROUP_BYTES", decoded + n)  # now each group fits
        assert len(list(read_blocks(path, Spec(FEATURES, (3,), False), 3000, pool))) == 14
        assert sorted(whole) == [0, 1, 2, 3]
    finally:
        pool.shutdown()
    _same_blocks(list(read_blocks(path, Spec(FEATURES, (3,), False), 3000)), pooled)


def _peak_reading(path, cols, part: int, pool) -> int:
    """The most Arrow memory held while reading a file's blocks."""
    base, peak = pa.total_allocated_bytes(), 0
    for block in read_blocks(path, Spec(cols, (10,), False), part, pool):
        peak = max(peak, pa.total_allocated_bytes() - base)
        assert block.rows == part
    return peak


def test_row_groups_on_workers_hold_a_few_groups_whatever_the_file_size(tmp_path):
    cols = [f"c{i}" for i in range(10)]
    peaks = []
    pool = worker_pool(2)
    try:
        for n in (400_000, 1_200_000):
            data = np.random.default_rng(0).normal(size=(n, 10))
            path = tmp_path / f"{n}.parquet"
            table = pa.table({c: data[:, i] for i, c in enumerate(cols)})
            pq.write_table(table, path, row_group_size=20_000)
            del data, table
            peaks.append(_peak_reading(path, cols, 10_000, pool))
    finally:
        pool.shutdown()
    # a row group decodes to 1.6 MB, the files to 32 and 96 MB; a worker decoding a group holds its
    # compressed pages and its arrays, and a few groups wait decoded (how many depends on timing)
    group = 20_000 * 10 * 8
    assert max(peaks) < 15 * group, peaks  # a few groups, whatever the file's size


def test_a_corrupt_row_group_read_on_a_worker_names_the_file(tmp_path):
    table = pa.Table.from_pandas(rows(3000), preserve_index=False)
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=500, compression="none")
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(3).column(1)
    start = column.data_page_offset
    data[start : start + 64] = b"\xff" * 64  # a page header of group 3 overwritten
    path.write_bytes(bytes(data))
    pool = worker_pool(3)
    try:
        with pytest.raises(Exception, match=r"a\.parquet: cannot read it as parquet"):
            list(read_blocks(path, Spec(FEATURES, (3,), False, ["id"]), 400, pool))
    finally:
        pool.shutdown()


@pytest.mark.parametrize("output", ["o.parquet", "o.csv", "o.jsonl", "folder"])
def test_a_job_on_several_workers_writes_the_bytes_one_worker_writes(tmp_path, output):
    package = linear_package(tmp_path / "pkg")
    df = rows(5000, seed=3)
    df.loc[::97, "f1"] = np.nan  # rejects, in several parts
    df.loc[::89, "f2"] = 1e6  # out of the training range
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), tmp_path / "in.parquet", row_group_size=600
    )
    df.to_csv(tmp_path / "in.csv", index=False)
    got = {}
    for workers in (1, 2, 4):
        out = tmp_path / f"w{workers}" / (output if output != "folder" else "parts")
        out.parent.mkdir()
        summary = predict(
            Options(
                str(package),
                str(tmp_path / "in.*"),
                out,
                keep=["id"],
                rejects=out.parent / "rejects.jsonl",
                threads=1,
                workers=workers,
                part_rows=450,
                batch_size=64,
                progress=False,
            )
        )
        assert (summary.rows, summary.workers) == (10_000, workers)
        files = sorted(out.iterdir()) if out.is_dir() else [out]
        got[workers] = (
            [f.name for f in files],
            [f.read_bytes() for f in files],
            (out.parent / "rejects.jsonl").read_bytes(),
            summary.rejects,
        )
    assert got[1][3] == 2 * len(range(0, 5000, 97))
    assert got[2] == got[1] and got[4] == got[1]


def test_a_job_stopped_by_a_later_file_keeps_the_parts_one_worker_keeps(tmp_path):
    package = linear_package(tmp_path / "pkg")
    rows(3000).to_parquet(tmp_path / "a.parquet", index=False, row_group_size=100)
    rows(10)[["id", "f0"]].to_parquet(tmp_path / "b.parquet", index=False)  # no f1, f2
    logs = {}
    for workers in (1, 4):
        out = tmp_path / f"w{workers}" / "o.parquet"
        out.parent.mkdir()
        options = Options(str(package), str(tmp_path / "*.parquet"), out, workers=workers)
        options.threads, options.part_rows, options.progress = 1, 100, False
        with pytest.raises(NnshipError, match=r"b\.parquet: .*f1, f2"):
            predict(options)
        logs[workers] = (staging_dir(out) / "parts.log").read_text().splitlines()
        assert not out.exists()
    assert len(logs[1]) == 30  # every part of a.parquet, recorded before the error
    assert [json.loads(e)["part"] for e in logs[4]] == [json.loads(e)["part"] for e in logs[1]]


def test_workers_out_of_range_are_refused_naming_the_flag(tmp_path):
    package = linear_package(tmp_path / "pkg")
    rows(10).to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(Exception, match=r"--workers 65: must be in \[0, 64\]"):
        predict(Options(str(package), str(tmp_path / "in.parquet"), tmp_path / "o.csv", workers=65))
