"""The package reader's variant choice, and the rows a run keeps for export."""

import numpy as np
import pytest

from nnship.contracts import HeldOut
from nnship.errors import NnshipError
from nnship.package import Package
from nnship.training.heldout import MAX_TEST_ROWS, load_heldout, sample_indices, save_heldout
from tests.manifests import manifest


def _package(tmp_path, gpu_variant=None):
    m = manifest()
    m.variants["fp16"] = m.variants["fp32"].model_copy(update={"file": "fp16.onnx"})
    m.variants["int8-static"] = m.variants["fp32"].model_copy(
        update={"file": "int8-static.onnx", "shipped": False}
    )
    m.gpu_variant = gpu_variant
    return Package(tmp_path, m)


def test_auto_takes_the_gpu_variant_only_where_a_gpu_runs_it(tmp_path):
    pkg = _package(tmp_path, gpu_variant="fp16")
    assert pkg.choose_variant("auto", gpu=True) == "fp16"
    assert pkg.choose_variant("auto", gpu=False) == "fp32"
    assert _package(tmp_path).choose_variant("auto", gpu=True) == "fp32"  # none recorded


def test_a_named_variant_must_be_shipped(tmp_path):
    pkg = _package(tmp_path)
    assert pkg.choose_variant("fp16", gpu=False) == "fp16"
    with pytest.raises(NnshipError, match="no shipped variant 'int8-static'; shipped: fp32, fp16"):
        pkg.choose_variant("int8-static", gpu=False)


def test_a_large_test_split_is_sampled_the_same_way_every_time():
    keep = sample_indices(25_000)
    assert len(keep) == MAX_TEST_ROWS == len(set(keep.tolist()))
    assert np.all(np.diff(keep) > 0) and np.array_equal(keep, sample_indices(25_000))
    assert np.array_equal(sample_indices(30), np.arange(30))


def test_held_out_rows_round_trip_and_are_verified(tmp_path):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(600, 4)), rng.normal(size=(30, 4))
    y_test = rng.integers(0, 3, 30)
    record = HeldOut.model_validate(save_heldout(tmp_path, x_train, x_test, y_test))
    assert record.calibration_rows == 512 and record.test_rows == record.test_total == 30
    rows = load_heldout(tmp_path, record, tmp_path / "checkpoint.json")
    assert np.array_equal(rows.x_test, x_test) and np.array_equal(rows.y_test, y_test)
    assert np.array_equal(rows.x_calibration, x_train[:512])
    with pytest.raises(NnshipError, match=r"checkpoint\.json: heldout: missing .* retrain"):
        load_heldout(tmp_path, None, tmp_path / "checkpoint.json")
    path = tmp_path / record.file
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(NnshipError, match="sha256 mismatch"):
        load_heldout(tmp_path, record, tmp_path / "checkpoint.json")
