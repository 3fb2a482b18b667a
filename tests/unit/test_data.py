import numpy as np
import pandas as pd
import pytest

from nnship.errors import NnshipError
from nnship.training.data import BUILTIN, input_stats, load_dataset, split


@pytest.mark.parametrize(
    ("name", "shape", "task", "n_out"),
    [
        ("digits", (1, 8, 8), "classification", 10),
        ("digits-seq", (8, 8), "classification", 10),
        ("breast-cancer", (30,), "classification", 2),
        ("wine", (13,), "classification", 3),
        ("iris", (4,), "classification", 3),
        ("diabetes", (10,), "regression", 1),
    ],
)
def test_builtin_sets(name, shape, task, n_out):
    ds = load_dataset(name)
    assert ds.input_shape == shape and ds.task == task and ds.num_outputs == n_out
    assert ds.x.dtype == np.float32
    assert set(BUILTIN) >= {name}


def test_split_is_stratified_fixed_and_disjoint():
    ds = load_dataset("digits")
    a, b = split(ds), split(ds)
    assert len(a.x_test) == 360
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    whole = np.bincount(ds.y) / len(ds.y)
    test = np.bincount(a.y_test) / len(a.y_test)
    assert np.abs(whole - test).max() < 0.01
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == len(ds.x)


def test_csv_and_parquet(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    df["kind"] = np.where(df.a > 0, "up", "down")
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    for f in ("t.csv", "t.parquet"):
        ds = load_dataset(str(tmp_path / f), target="kind")
        assert ds.task == "classification" and ds.labels == ["down", "up"]
        assert ds.feature_names == ["a", "b", "c"] and ds.input_shape == (3,)
    df["kind"] = df.a * 3.5 + 0.1
    df.to_csv(tmp_path / "r.csv", index=False)
    assert load_dataset(str(tmp_path / "r.csv"), target="kind").task == "regression"


def test_sequence_npz_stats(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "s.npz", X=x, y=np.arange(50) % 2)
    ds = load_dataset(str(tmp_path / "s.npz"))
    assert ds.layout == "sequence" and len(ds.feature_names) == 3
    stats = input_stats(ds, x)
    assert len(stats) == 3
    assert stats[1]["max"] == pytest.approx(float(x[:, :, 1].max()))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("a,b\n"), "no data rows"),
        (lambda p: p.write_text(""), "the file is empty"),
        (lambda p: p.write_text("a,b,y\n" + "1,2,0\n" * 20), "no target column 'label'"),
        (
            lambda p: p.write_text("a,b,label\n" + "1,x,0\n" * 20),
            "non-numeric feature column(s): b",
        ),
        (
            lambda p: p.write_text("a,b,label\n" + "1,,0\n" * 20),
            "NaN or infinite values in column(s): b",
        ),
    ],
)
def test_bad_csv(tmp_path, make, message):
    path = tmp_path / "bad.csv"
    make(path)
    with pytest.raises(NnshipError) as e:
        load_dataset(str(path), target="label")
    assert message in str(e.value)


def test_bad_npz(tmp_path):
    np.savez(tmp_path / "m.npz", X=np.zeros((10, 3)), y=np.zeros(9))
    with pytest.raises(NnshipError, match="X has 10 rows but y has 9"):
        load_dataset(str(tmp_path / "m.npz"))
    np.savez(tmp_path / "o.npz", X=np.array([object()] * 10, dtype=object), y=np.zeros(10))
    with pytest.raises(NnshipError, match="never loads"):
        load_dataset(str(tmp_path / "o.npz"))
    with pytest.raises(NnshipError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
