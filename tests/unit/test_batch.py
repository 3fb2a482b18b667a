"""`nnship predict` on a tiny linear package: readers, rejects, outputs, staging (no training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nnship.batch import sinks
from nnship.batch.engine import probabilities
from nnship.batch.job import Options, predict, staging_dir
from nnship.batch.rows import check_columns, check_nested, column_names, column_values
from nnship.batch.sources import Spec, read_block_at, read_blocks
from nnship.errors import NnshipError
from nnship.io import sha256_file
from nnship.numeric import softmax
from nnship.service.validation import F32_MAX, Validator
from tests.batchpkg import expected, linear_package
from tests.manifests import manifest

FEATURES = ["f0", "f1", "f2"]


@pytest.fixture
def package(tmp_path):
    return linear_package(tmp_path / "pkg")


def rows(n: int, seed: int = 0) -> pd.DataFrame:
    x = np.random.default_rng(seed).uniform(0, 10, (n, 3))
    df = pd.DataFrame(x, columns=FEATURES)
    df.insert(0, "id", np.arange(n))
    return df


def run(package, tmp_path, src, out, **kw):
    options = Options(str(package), str(src), tmp_path / out, progress=False, threads=1, **kw)
    return predict(options)


def test_parquet_output_equals_the_model_for_every_batch_size(package, tmp_path):
    df = rows(1000)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    want = softmax(expected(df[FEATURES].to_numpy()))
    for bs in (1, 7, 1024):
        s = run(
            package,
            tmp_path,
            tmp_path / "in.parquet",
            f"o{bs}.parquet",
            batch_size=bs,
            keep=["id"],
            part_rows=300,
        )
        out = pq.read_table(tmp_path / f"o{bs}.parquet")
        assert s.rows == s.predicted == 1000 and s.parts == 4 and s.batch_size == bs
        assert out.column_names == ["id", "prediction", "p_a", "p_b", "out_of_range"]
        assert out.column("id").to_pylist() == list(range(1000))
        p = np.stack([out.column("p_a").to_numpy(), out.column("p_b").to_numpy()], axis=1)
        np.testing.assert_allclose(p, want, rtol=1e-6, atol=1e-7)
        assert out.column("prediction").to_pylist() == list(np.array(["a", "b"])[want.argmax(1)])
    assert not staging_dir(tmp_path / "o7.parquet").exists()


def test_every_input_format_gives_the_same_rows(package, tmp_path):
    df = rows(50)
    df.to_parquet(tmp_path / "a.parquet", index=False)
    df.to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    arrays = "".join(json.dumps(r) + "\n" for r in df[FEATURES].to_numpy().tolist())
    (tmp_path / "b.jsonl").write_text(arrays)
    np.save(tmp_path / "a.npy", df[FEATURES].to_numpy())
    np.savez(tmp_path / "a.npz", X=df[FEATURES].to_numpy(), id=df["id"].to_numpy())
    tables = {}
    for name in ("a.parquet", "a.csv", "a.jsonl", "b.jsonl", "a.npy", "a.npz"):
        keep = [] if name in ("b.jsonl", "a.npy") else ["id"]
        run(package, tmp_path, tmp_path / name, f"out-{name}.parquet", keep=keep, part_rows=16)
        tables[name] = pq.read_table(tmp_path / f"out-{name}.parquet")
    ref = tables["a.parquet"]
    for name, t in tables.items():
        assert t.column("p_a").equals(ref.column("p_a")), name
        if "id" in t.column_names:
            assert t.column("id").to_pylist() == list(range(50)), name


def test_blocks_have_exactly_part_rows(tmp_path):
    df = rows(1000)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), tmp_path / "a.parquet", row_group_size=130
    )
    spec = Spec(FEATURES, (3,), False, ["id"])
    sizes = [b.rows for b in read_blocks(tmp_path / "a.parquet", spec, 300)]
    assert sizes == [300, 300, 300, 100]
    starts = [int(b.numbers[0]) for b in read_blocks(tmp_path / "a.parquet", spec, 300)]
    assert starts == [0, 300, 600, 900]


def test_bad_rows_go_to_the_rejects_file_with_their_rule(package, tmp_path):
    (tmp_path / "in.csv").write_text(
        "id,f0,f1,f2\n0,1,2,3\n1,nan,2,3\n2,1,abc,3\n3,1,,3\n4,1,2,1e39\n5,4,5,6\n"
    )
    s = run(
        package, tmp_path, tmp_path / "in.csv", "o.csv", keep=["id"], rejects=tmp_path / "rej.jsonl"
    )
    assert (s.rows, s.predicted, s.rejects) == (6, 2, 4)
    rejects = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"], r["rule"]) for r in rejects] == [
        (1, "f0", "finite_required"),
        (2, "f1", "number_required"),
        (3, "f1", "missing"),
        (4, "f2", "float32_range"),
    ]
    out = pd.read_csv(tmp_path / "o.csv")
    assert out["id"].tolist() == [0, 5]


def test_json_values_are_strict_numbers():
    values, codes = column_values([1, 2.5, True, "3", None, 10**400, float("inf")])
    assert codes.tolist() == [0, 0, 2, 2, 1, 4, 3]
    assert values[:2].tolist() == [1.0, 2.5]


def test_sequences_of_several_lengths_run_apart_and_wrong_ones_are_rejected():
    v = Validator(manifest(family="lstm", shape=(4, 2)), max_rows=1)
    rows_ = [[[1, 2]] * 4, [[1, 2]] * 3, [[1, 2]] * 17, [[1, 2, 3]], "x", [[1, 2]] * 3]
    checked = check_nested(rows_, v, "f", np.arange(10, 16))
    assert checked.valid.tolist() == [0, 1, 5]
    assert sorted(x.shape for _, x in checked.groups) == [(1, 4, 2), (2, 3, 2)]
    assert [(r.row, r.rule) for r in checked.rejects] == [
        (12, "sequence_length"),
        (13, "shape"),
        (14, "array_required"),
    ]


def test_flat_columns_of_a_sequence_model_are_named_per_step():
    assert column_names(manifest(family="lstm", shape=(2, 2))) == [
        "f0[0]",
        "f1[0]",
        "f0[1]",
        "f1[1]",
    ]


def test_features_outside_the_training_range_are_flagged(package, tmp_path):
    pd.DataFrame({"f0": [1.0, 50.0], "f1": [1.0, -20.0], "f2": [1.0, 2.0]}).to_parquet(
        tmp_path / "in.parquet"
    )
    run(package, tmp_path, tmp_path / "in.parquet", "o.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["out_of_range"] for r in lines] == [[], ["f0", "f1"]]


def test_too_many_rejects_stop_the_job_and_write_nothing(package, tmp_path):
    df = rows(100)
    df.loc[::2, "f1"] = np.nan
    df.to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(
        NnshipError, match=r"50 of 100 rows rejected \(50.0%\), more than --max-reject-fraction 0.1"
    ):
        run(package, tmp_path, tmp_path / "in.parquet", "o.parquet", max_reject_fraction=0.1)
    assert not (tmp_path / "o.parquet").exists()


def test_a_missing_column_is_refused_in_one_line(package, tmp_path):
    rows(5).drop(columns="f2").to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(
        NnshipError, match=r"in.csv: no column f2 \(the package's features are f0, f1, f2"
    ):
        run(package, tmp_path, tmp_path / "in.csv", "o.parquet")


def test_folder_output_and_existing_output(package, tmp_path):
    rows(100).to_parquet(tmp_path / "in.parquet", index=False)
    run(package, tmp_path, tmp_path / "in.parquet", "outdir", part_rows=40, format="csv")
    assert sorted(p.name for p in (tmp_path / "outdir").iterdir()) == [
        "part-00000-00000.csv",
        "part-00000-00001.csv",
        "part-00000-00002.csv",
    ]
    assert pd.read_csv(tmp_path / "outdir" / "part-00000-00002.csv").shape[0] == 20
    with pytest.raises(NnshipError, match="already exists; pass --overwrite"):
        run(package, tmp_path, tmp_path / "in.parquet", "outdir")


def test_csv_file_output_has_one_header(package, tmp_path):
    rows(100).to_parquet(tmp_path / "in.parquet", index=False)
    run(package, tmp_path, tmp_path / "in.parquet", "o.csv", part_rows=30, keep=["id"])
    out = pd.read_csv(tmp_path / "o.csv")
    assert out["id"].tolist() == list(range(100))
    assert list(out.columns) == ["id", "prediction", "p_a", "p_b", "out_of_range"]


def test_resume_after_a_failure_keeps_completed_parts(package, tmp_path):
    df = rows(100)
    df.loc[90:, "f0"] = np.nan  # the last part is all rejects: the job stops there
    df.to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(NnshipError, match="rows rejected"):
        run(
            package,
            tmp_path,
            tmp_path / "in.parquet",
            "o.parquet",
            part_rows=10,
            max_reject_fraction=0.05,
        )
    assert len((staging_dir(tmp_path / "o.parquet") / "parts.log").read_text().splitlines()) >= 8
    s = run(package, tmp_path, tmp_path / "in.parquet", "o.parquet", part_rows=10, resume=True)
    assert s.resumed_parts >= 8 and s.rows == 100 and s.rejects == 10
    run(package, tmp_path, tmp_path / "in.parquet", "ref.parquet", part_rows=10)
    assert (tmp_path / "o.parquet").read_bytes() == (tmp_path / "ref.parquet").read_bytes()


def test_resume_refuses_a_changed_input(package, tmp_path):
    df = rows(100)
    df.loc[50:, "f0"] = np.nan
    df.to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(NnshipError):
        run(
            package,
            tmp_path,
            tmp_path / "in.parquet",
            "o.parquet",
            part_rows=10,
            max_reject_fraction=0.1,
        )
    assert staging_dir(tmp_path / "o.parquet").exists()
    rows(101).to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(NnshipError, match="--resume: the input files changed since the job began"):
        run(package, tmp_path, tmp_path / "in.parquet", "o.parquet", part_rows=10, resume=True)
    s = run(package, tmp_path, tmp_path / "in.parquet", "o.parquet", part_rows=10)  # afresh
    assert (s.rows, s.rejects, s.resumed_parts) == (101, 0, 0)


def test_reading_parquet_holds_about_one_block_whatever_the_file_size(tmp_path):
    n, cols = 400_000, [f"c{i}" for i in range(10)]
    data = np.random.default_rng(0).normal(size=(n, 10))
    table = pa.table({c: data[:, i] for i, c in enumerate(cols)})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=20_000)
    del table, data
    base, peak = pa.total_allocated_bytes(), 0
    for block in read_blocks(tmp_path / "a.parquet", Spec(cols, (10,), False), 10_000):
        peak = max(peak, pa.total_allocated_bytes() - base)
        assert block.rows == 10_000
    assert peak < n * 10 * 8 / 3  # the file decodes to 32 MB, a block to 0.8 MB


def test_a_block_read_on_its_own_equals_the_streamed_one(tmp_path):
    df = rows(1000)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), tmp_path / "a.parquet", row_group_size=130
    )
    np.save(tmp_path / "a.npy", df[FEATURES].to_numpy())
    for name, keep in (("a.parquet", ["id"]), ("a.npy", [])):
        spec = Spec(FEATURES, (3,), False, keep)
        streamed = list(read_blocks(tmp_path / name, spec, 300))
        for i, block in enumerate(streamed):
            alone = read_block_at(tmp_path / name, spec, 300, i)
            assert alone.numbers.tolist() == block.numbers.tolist(), (name, i)
            if block.kind == "columns":
                for a, b in zip(
                    alone.features + list(alone.keep.values()),
                    block.features + list(block.keep.values()),
                    strict=True,
                ):
                    assert a.equals(b)
            else:
                np.testing.assert_array_equal(alone.features, block.features)
        assert read_block_at(tmp_path / name, spec, 300, len(streamed)) is None


def test_without_ray_the_engine_says_so_in_one_line(monkeypatch, tmp_path):
    import importlib.util

    from nnship.batch import ray_engine

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a)
    )
    with pytest.raises(
        NnshipError,
        match=r"^--engine ray needs Ray, an optional extra: pip install 'nnship\[ray\]'$",
    ):
        ray_engine.require_ray()


def test_the_benchmark_report_gives_the_ratio_against_the_bar_and_memory_growth():
    from nnship.batch.benchmark import render

    def run(rps, rss):
        return {"rows": 1000, "rows_per_s": rps, "startup_s": 0.3, "peak_rss_mb": rss, "parts": 3}

    result = {
        "model": "cnn",
        "dataset": "digits",
        "part_rows": 4096,
        "load": 3.5,
        "stages": {"read": 0.5, "check": 0.2, "infer": 0.2, "table": 0.1, "write": 0.2},
        "reading": {"1": 2000.0, "2": 3500.0},
        "1x": {"job": {**run(900.0, 300.0), "workers": 1}, "in_memory": run(1000.0, 250.0)},
        "10x": {
            "job": run(800.0, 330.0),
            "in_memory": run(1000.0, 900.0),
            "ray": run(500.0, 310.0),
        },
    }
    text = render([result])
    assert "| cnn (digits) | 1,000 (1x) | 900 | 1,000 | 0.90 | met (≥ 0.85) |" in text
    assert "| 0.80 | missed (≥ 0.85) | 0.3 | 330.0 | 900.0 | 500 (driver 310.0 MB) |" in text
    assert (
        "peak RSS 300.0 MB at 1x (3 parts of 4,096 rows), 330.0 MB at 10x (3 parts) (+10%)" in text
    )
    # 2 cores: at most 2 x 0.2 / 1.2 of the in-memory rows/s, below the bar, said with the figures
    assert "| cnn | 0.500 | 0.200 | 0.200 | 0.100 | 0.200 | 1.200 | 0.33 |" in text.replace(
        f"| {psutil.cpu_count() * 0.2 / 1.2:.2f} |", "| 0.33 |"
    )
    assert "load average at the end of each model's runs: cnn 3.5." in text
    assert "default `--workers` (1: the cores" in text
    # the reader side by workers, and the cores 0.85 x 1.2 / 0.2 = 5.1 -> 6 the bar would need
    assert "| model | 1 worker | 2 workers | scaling | cores for the bar |" in text
    assert "| cnn | 2,000 | 3,500 | 1.75x | 6 |" in text
    out_of_reach = psutil.cpu_count() * 0.2 / 1.2 < 0.85
    assert ("out of reach for the cnn" in text) == out_of_reach


def test_probabilities_equal_the_service_softmax_value_for_value():
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 10, 17):
        logits = (rng.normal(size=(513, k)) * rng.choice([0.01, 1, 30, 1e4], size=(513, 1))).astype(
            np.float32
        )
        assert np.array_equal(probabilities(logits), softmax(logits), equal_nan=True)


def test_a_block_of_bad_values_is_rejected_by_the_first_bad_feature_of_each_row():
    just_over = np.nextafter(F32_MAX, np.inf)  # rounds to the float32 maximum, yet overflows it
    cols = [
        pa.chunked_array([[1.0, np.nan, 3.0], [4.0, 5.0]]),  # two chunks, as a rechunked block
        pa.array([1, 2, None, 4, 5], type=pa.int32()),
        pa.array([1.0, -np.inf, 2.0, just_over, 5.0]),
    ]
    checked = check_columns(cols, ["a", "b", "c"], (3,), "f", np.arange(10, 15))
    assert [(r.row, r.field, r.rule) for r in checked.rejects] == [
        (11, "a", "finite_required"),
        (12, "b", "missing"),
        (13, "c", "float32_range"),
    ]
    assert checked.valid.tolist() == [0, 4]
    assert checked.groups[0][1].tolist() == [[1, 1, 1], [5, 5, 5]]
    assert checked.groups[0][1].dtype == np.float32 and checked.groups[0][1].flags.c_contiguous


def test_range_flags_from_column_bounds_equal_the_service_rule_row_by_row(package):
    from nnship.batch.engine import Engine, open_runtime

    runtime = open_runtime(str(package), "fp32", 1)
    validator = Validator(runtime.manifest, max_rows=1)
    engine = Engine(runtime, 64, validator)
    inside = np.random.default_rng(0).uniform(0, 10, (50, 3))
    assert (
        engine.flags(
            check_columns([pa.array(c) for c in inside.T], FEATURES, (3,), "f", np.arange(50))
        )
        is None
    )
    x = inside.copy()
    x[7, 1], x[20, 0], x[20, 2] = 1e6, -1e6, 11.5
    checked = check_columns([pa.array(c) for c in x.T], FEATURES, (3,), "f", np.arange(50))
    want = validator.outside(x.astype(np.float32)).any(axis=1)
    np.testing.assert_array_equal(engine.flags(checked), want)
    table = engine.table({}, engine.logits(checked), engine.flags(checked))
    flagged = table.column("out_of_range").to_pylist()
    assert flagged[7] == ["f1"] and flagged[20] == ["f0", "f2"]
    assert sum(map(len, flagged)) == 3


def test_parts_are_encoded_once_and_their_hash_is_that_of_the_file(tmp_path):
    table = pa.table(
        {
            "id": pa.array([3, 1, 2]),
            "prediction": ["a", "b", "a"],
            "p_a": pa.array([0.5, 0.25, 1.0], type=pa.float32()),
            "out_of_range": pa.array([[], ["f0"], []], type=pa.list_(pa.string())),
        }
    )
    for fmt in ("arrow", "parquet", "csv", "jsonl"):
        path = tmp_path / f"part{sinks.EXTENSION[fmt]}"
        assert sinks.write_table(table, path, fmt) == sha256_file(path)
    assert sinks.read_part(tmp_path / "part.arrow").equals(table)
    assert sinks.part_format("parquet", single=True) == "arrow"
    assert sinks.part_format("parquet", single=False) == "parquet"
    meta = pq.ParquetFile(tmp_path / "part.parquet").metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert "RLE_DICTIONARY" in columns["prediction"].encodings
    assert "RLE_DICTIONARY" in columns["out_of_range.list.element"].encodings
    assert "RLE_DICTIONARY" not in columns["p_a"].encodings
    assert columns["id"].is_stats_set and not columns["p_a"].is_stats_set
    assert pq.read_table(tmp_path / "part.parquet").equals(table)
