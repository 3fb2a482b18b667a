"""A run exports from its own directory: after its CSV is gone, with the same parity figures."""

import json
import shutil

import numpy as np
import pytest

from nnship.contracts import as_json
from nnship.errors import NnshipError
from nnship.export.package import ExportOptions, export_run
from nnship.training.train import TrainConfig, train


def _csv(path, n=240, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 3, (3, 5))[y] + rng.normal(0, 1, (n, 5))
    lines = ["a,b,c,d,e,label"] + [
        ",".join(f"{v:.5f}" for v in row) + f",k{c}" for row, c in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(data, run):
    train(TrainConfig(model="mlp", dataset=str(data), target="label", epochs=3, out=str(run)))
    return run


def _export(run):
    opts = ExportOptions(
        str(run),
        store=False,
        variants=("fp32", "int8-dynamic", "int8-static"),
        bench_seconds=0.02,
        max_batch=64,
        threads=1,
    )
    return as_json(export_run(opts))


def _figures(manifest):
    """What export measured on the held-out rows, per variant (speed aside)."""
    return {
        name: {k: v.get(k) for k in ("shipped", "parity", "test_metric", "metrics")}
        for name, v in manifest["variants"].items()
    }


def test_export_after_the_csv_is_gone_gives_the_same_parity_figures(tmp_path):
    data = _csv(tmp_path / "data.csv")
    first = _export(_train(data, tmp_path / "first"))
    second_run = _train(data, tmp_path / "second")
    data.unlink()
    second = _export(second_run)
    assert second["checkpoint_sha256"] == first["checkpoint_sha256"]  # the same training
    assert _figures(second) == _figures(first)
    assert second["pytorch"]["test_metric"] == first["pytorch"]["test_metric"]
    meta = json.loads((tmp_path / "second" / "checkpoint.json").read_text())
    assert meta["heldout"]["test_rows"] == meta["dataset"]["rows"]["test"] == 48
    assert meta["heldout"]["calibration_rows"] == meta["dataset"]["rows"]["train"]


def test_a_run_without_held_out_rows_is_refused_in_one_line(tiny_run, tmp_path):
    old = shutil.copytree(tiny_run, tmp_path / "old")
    meta = json.loads((old / "checkpoint.json").read_text())
    del meta["heldout"]
    (old / "checkpoint.json").write_text(json.dumps(meta))
    (old / "heldout.safetensors").unlink()
    with pytest.raises(NnshipError) as e:
        export_run(ExportOptions(str(old), store=False, variants=("fp32",)))
    text = str(e.value)
    assert text.startswith(f"{old / 'checkpoint.json'}: heldout: missing") and "retrain" in text
    assert "\n" not in text


def test_tampered_held_out_rows_are_refused(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    path = run / "heldout.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(NnshipError, match=r"heldout\.safetensors: sha256 mismatch"):
        export_run(ExportOptions(str(run), store=False, variants=("fp32",)))
