"""A tiny model package built without training: a linear ONNX classifier over three features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from nnship.contracts import PACKAGE_FORMAT, as_json
from nnship.io import sha256_file
from tests.manifests import manifest

WEIGHTS = np.array([[1.0, -1.0], [0.5, 0.25], [-0.75, 1.5]], dtype=np.float32)
BIAS = np.array([0.1, -0.2], dtype=np.float32)


def linear_package(folder: Path) -> Path:
    """fp32.onnx (input [batch, 3] -> output [batch, 2]) and its manifest: features f0..f2 trained
    on [0, 10], labels a and b."""
    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["z"]),
            helper.make_node("Add", ["z", "B"], ["output"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [onnx.numpy_helper.from_array(WEIGHTS, "W"), onnx.numpy_helper.from_array(BIAS, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "fp32.onnx")
    record = {"format": PACKAGE_FORMAT, **as_json(manifest(shape=(3,)))}
    record["variants"]["fp32"]["sha256"] = sha256_file(folder / "fp32.onnx")
    (folder / "manifest.json").write_text(json.dumps(record))
    return folder


def expected(x: np.ndarray) -> np.ndarray:
    """The package's logits for rows x, computed without ONNX Runtime."""
    return x.astype(np.float32) @ WEIGHTS + BIAS
