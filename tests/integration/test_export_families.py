"""Every family and activation exports to a checked, single-file ONNX model that matches PyTorch."""

import numpy as np
import onnx
import pytest
import torch

from nnship.export.onnx_export import export_onnx, read_metadata
from nnship.export.parity import check_parity, edge_batches
from nnship.models import ACTIVATIONS, build_model
from nnship.onnxrt import cpu_session

SHAPES = {"mlp": (10,), "cnn": (1, 8, 8), "rnn": (6, 4), "lstm": (6, 4), "gru": (6, 4)}
SMALL = {
    "mlp": {"hidden": [16]},
    "cnn": {"channels": [4, 8], "hidden": 8},
    "rnn": {"hidden_size": 8, "head_hidden": 8},
    "lstm": {"hidden_size": 8, "head_hidden": 8},
    "gru": {"hidden_size": 8, "head_hidden": 8, "num_layers": 1, "bidirectional": False},
}


def _fitted(name, activation, seed=0):
    torch.manual_seed(seed)
    shape = SHAPES[name]
    model = build_model(name, {**SMALL[name], "activation": activation}, shape, 3)
    x = np.random.default_rng(seed).normal(2, 3, (64, *shape)).astype(np.float32)
    model.preprocess.fit(x, np.arange(64) % 3, "classification")
    return model.eval(), x


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_export_and_parity(tmp_path, name, activation):
    model, x = _fitted(name, activation)
    path = tmp_path / "m.onnx"
    info = export_onnx(
        model, path, {"nnship.task": "classification", "nnship.labels": ["a", "b", "c"]}
    )
    assert info["exporter"] == ("torchscript" if name == "rnn" else "dynamo")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # single file, no temp or .data left
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert read_metadata(path)["nnship.labels"] == '["a","b","c"]'
    sequence = name in ("rnn", "lstm", "gru")
    report = check_parity(
        cpu_session(path), model, edge_batches(x, sequence, 1000), classification=True
    )
    assert report.passed, report.problem
    names = {b.name for b in report.batches}
    assert {"test", "batch-1", "batch-7", "batch-1000"} <= names
    if sequence:
        assert {"length-1", "length-3", "length-12"} <= names
    assert report.max_abs < 1e-4


def test_preprocessing_is_inside_the_graph(tmp_path):
    model = build_model("mlp", {"hidden": [8]}, (10,), 2, preprocess={"select_k": 6, "pca": 3})
    x = np.random.default_rng(0).normal(50, 20, (80, 10)).astype(np.float32)
    model.preprocess.fit(x, np.arange(80) % 2, "classification")
    export_onnx(model.eval(), tmp_path / "p.onnx", {})
    ops = {n.op_type for n in onnx.load(str(tmp_path / "p.onnx")).graph.node}
    assert {"Gather", "MatMul"} & ops and ("Sub" in ops or "Div" in ops)
    out = cpu_session(tmp_path / "p.onnx").run(None, {"input": x})[0]  # raw inputs in
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_parity_gate_catches_a_wrong_graph(tmp_path):
    model, x = _fitted("mlp", "relu")
    export_onnx(model, tmp_path / "m.onnx", {})
    other, _ = _fitted("mlp", "relu", seed=1)  # same architecture, other weights
    report = check_parity(cpu_session(tmp_path / "m.onnx"), other, {"test": x}, classification=True)
    assert not report.passed and "exceeds atol" in report.problem
    assert report.max_abs > 1e-3
