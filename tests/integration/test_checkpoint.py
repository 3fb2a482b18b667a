import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nnship.errors import NnshipError
from nnship.io import sha256_file
from nnship.training.checkpoint import load_checkpoint
from nnship.training.data import load_dataset, split


def test_round_trip_reproduces_predictions_bit_exactly(tiny_run):
    model, meta = load_checkpoint(tiny_run)
    sp = split(load_dataset("iris"))
    x = torch.from_numpy(sp.x_test)
    again, _ = load_checkpoint(tiny_run)
    a, b = model(x), again(x)
    assert torch.equal(a, b)
    saved = load_file(str(tiny_run / "checkpoint.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert meta.architecture.name == "mlp"


def test_checkpoint_json_contract(tiny_run):
    meta = json.loads((tiny_run / "checkpoint.json").read_text())
    assert meta["weights"]["sha256"] == sha256_file(tiny_run / "checkpoint.safetensors")
    spec = meta["input"]
    assert spec["shape"] == [4] and spec["dtype"] == "float32"
    assert spec["feature_names"][0] == "sepal length (cm)"
    stats = spec["stats"][0]
    assert set(stats) == {"name", "min", "max", "mean", "std", "quantiles"}
    assert stats["min"] <= stats["quantiles"]["q50"] <= stats["max"]
    assert meta["output"] == {
        "name": "output",
        "task": "classification",
        "labels": ["setosa", "versicolor", "virginica"],
        "shape": [3],
    }
    assert len(meta["dataset"]["sha256"]) == 64
    assert meta["dataset"]["rows"] == {"train": 102, "val": 18, "test": 30}
    assert {"torch", "numpy", "python", "scikit-learn"} <= set(meta["versions"])
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert {"test_accuracy", "val_accuracy", "train_seconds", "epochs"} <= set(metrics)
    assert metrics["epochs"] == 3
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (tiny_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tiny_run.parent.glob(".*partial")), "staging directory left behind"


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def test_flipped_byte_is_refused(run_copy):
    path = run_copy / "checkpoint.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(NnshipError, match=r"checkpoint.safetensors: sha256 mismatch"):
        load_checkpoint(run_copy)


def test_truncated_weights_refused(run_copy):
    path = run_copy / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(NnshipError, match="modified or truncated"):
        load_checkpoint(run_copy)


def test_missing_pieces(run_copy, tmp_path):
    with pytest.raises(NnshipError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (run_copy / "checkpoint.safetensors").unlink()
    with pytest.raises(NnshipError, match=r"checkpoint\.safetensors: missing"):
        load_checkpoint(run_copy)
    (run_copy / "checkpoint.json").write_text("{not json")
    with pytest.raises(NnshipError, match=r"checkpoint\.json: not valid JSON"):
        load_checkpoint(run_copy)
    (run_copy / "checkpoint.json").unlink()
    with pytest.raises(NnshipError, match=r"checkpoint\.json: missing"):
        load_checkpoint(run_copy)


def test_weights_from_another_architecture(run_copy):
    meta = json.loads((run_copy / "checkpoint.json").read_text())
    other = {f"w{i}": torch.zeros(3) for i in range(2)}
    save_file(other, str(run_copy / "checkpoint.safetensors"))
    meta["weights"]["sha256"] = sha256_file(run_copy / "checkpoint.safetensors")
    (run_copy / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(NnshipError, match="weights do not fit the mlp architecture"):
        load_checkpoint(run_copy)


def test_unknown_architecture_in_json(run_copy):
    meta = json.loads((run_copy / "checkpoint.json").read_text())
    meta["architecture"]["name"] = "resnet"
    (run_copy / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(NnshipError, match="invalid architecture: unknown model 'resnet'"):
        load_checkpoint(run_copy)


def test_config_mismatch_detected(run_copy):
    meta = json.loads((run_copy / "checkpoint.json").read_text())
    meta["architecture"]["config"]["hidden"] = [7]
    (run_copy / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(NnshipError, match="weights do not fit"):
        load_checkpoint(run_copy)
