"""The load test's request rows: drawn from a model's training statistics, or read from a file."""

import json

import numpy as np
import pandas as pd
import pytest

from nnship.errors import NnshipError
from nnship.loadtests.rows import Served, drawn_rows, file_rows


def _served(shape, feats, name="m") -> Served:
    lows = np.arange(feats, dtype=float)
    return Served(
        name=name,
        shape=shape,
        feature_names=[f"f{i}" for i in range(feats)],
        stats={
            "mean": list(lows + 0.5),
            "std": [5.0] * feats,
            "min": list(lows),
            "max": list(lows + 1),
        },
    )


@pytest.mark.parametrize(
    ("shape", "feats", "row"),
    [([4], 4, (4,)), ([1, 3, 3], 9, (1, 3, 3)), ([-1, 3], 3, (6, 3))],
    ids=["tabular", "image", "sequence"],
)
def test_drawn_rows_keep_to_each_features_training_range(shape, feats, row):
    served = _served(shape, feats)
    x = drawn_rows(served, n=500, seed=1, seq_len=6)
    assert x.shape == (500, *row) and x.dtype == np.float32
    per_feature = x.reshape(-1, feats)  # a sequence's steps, or an image's pixels, one per feature
    lows = np.arange(feats)
    assert (per_feature >= lows).all() and (per_feature <= lows + 1).all()
    assert np.ptp(per_feature, axis=0).min() > 0.5  # spread over the range, not one value
    np.testing.assert_array_equal(x, drawn_rows(served, n=500, seed=1, seq_len=6))
    assert not np.array_equal(x, drawn_rows(served, n=500, seed=2, seq_len=6))


def test_csv_rows_drop_the_target_and_take_features_by_name(tmp_path):
    served = _served([3], 3)
    df = pd.DataFrame({"f2": [3.0, 6.0], "y": ["a", "b"], "f0": [1.0, 4.0], "f1": [2.0, 5.0]})
    df.to_csv(tmp_path / "rows.csv", index=False)
    x = file_rows(tmp_path / "rows.csv", served, target="y")
    np.testing.assert_array_equal(x, [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(NnshipError, match=r"--target 'label' is not a column of .*rows.csv"):
        file_rows(tmp_path / "rows.csv", served, target="label")


def test_unnamed_columns_are_taken_in_file_order_and_must_fit(tmp_path):
    served = _served([3], 3)
    pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0], "t": ["x"]}).to_parquet(
        tmp_path / "r.parquet"
    )
    np.testing.assert_array_equal(
        file_rows(tmp_path / "r.parquet", served, target="t"), [[1, 2, 3]]
    )
    with pytest.raises(NnshipError, match=r"column 't' is not numeric \(name the label column"):
        file_rows(tmp_path / "r.parquet", served)
    pd.DataFrame({"a": [1.0], "b": [2.0]}).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(NnshipError) as e:
        file_rows(tmp_path / "two.csv", served)
    assert str(e.value).endswith(
        "rows of shape [2] do not fit m, which takes rows of 3 values (shape [3])"
    )


def test_image_and_sequence_rows_from_flat_columns_and_arrays(tmp_path):
    image = _served([1, 2, 2], 4)
    pd.DataFrame(np.arange(8.0).reshape(2, 4)).to_csv(tmp_path / "px.csv", index=False)
    assert file_rows(tmp_path / "px.csv", image).shape == (2, 1, 2, 2)
    seq = _served([-1, 2], 2)
    np.save(tmp_path / "seq.npy", np.ones((5, 7, 2), dtype=np.float32))
    assert file_rows(tmp_path / "seq.npy", seq).shape == (5, 7, 2)
    np.save(tmp_path / "flat.npy", np.ones((5, 6)))
    assert file_rows(tmp_path / "flat.npy", seq).shape == (5, 3, 2)  # steps one after the other
    np.save(tmp_path / "odd.npy", np.ones((5, 7)))
    with pytest.raises(NnshipError, match=r"takes rows of steps of 2 values \(shape \[-1, 2\]\)"):
        file_rows(tmp_path / "odd.npy", seq)


def test_json_lines_of_lists_or_named_records(tmp_path):
    served = _served([2], 2)
    lines = [[1, 2], {"f1": 4, "f0": 3}, {"f0": 5}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(v) for v in lines[:2]) + "\n\n")
    np.testing.assert_array_equal(file_rows(tmp_path / "r.jsonl", served), [[1, 2], [3, 4]])
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(v) for v in lines))
    with pytest.raises(NnshipError, match=r"line 3 lacks features \['f1'\]"):
        file_rows(tmp_path / "bad.jsonl", served)


@pytest.mark.parametrize(
    ("name", "content", "target", "message"),
    [
        ("none.csv", None, None, "no such file"),
        ("r.txt", "1,2", None, "use a .csv, .parquet, .jsonl or .npy file"),
        ("r.jsonl", "[1, 2]\n", "y", "--target is for CSV and Parquet files, not r.jsonl"),
        ("r.csv", "f0,f1\n", None, "holds no rows"),
        ("r.csv", "f0,f1\n1,2\n3,\n", None, "row 1 holds a missing or non-finite value"),
        ("r.jsonl", "[1, 2\n", None, "cannot read it"),
    ],
)
def test_unusable_files_are_refused_in_one_line(tmp_path, name, content, target, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(NnshipError) as e:
        file_rows(tmp_path / name, _served([2], 2), target=target)
    assert str(e.value).startswith(f"--rows {tmp_path / name}") or "--target" in str(e.value)
    assert message in str(e.value) and "\n" not in str(e.value)
