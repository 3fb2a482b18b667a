"""Export a trained Network to a single-file ONNX model with a dynamic batch (and sequence) axis."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from nnship.errors import NnshipError
from nnship.io import atomic_write
from nnship.models import RECURRENT, Network

log = logging.getLogger(__name__)

INPUT, OUTPUT = "input", "output"
OPSET = 18
MAX_BATCH = 1 << 20
MAX_SEQ = 1 << 16


def _exporter_for(model: Network) -> str:
    # torch.export specializes plain nn.RNN to the example's sequence length; the TorchScript
    # exporter emits a real ONNX RNN op with a dynamic time axis, so plain RNNs take that path.
    return "torchscript" if model.name == "rnn" else "dynamo"


def export_onnx(model: Network, path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write model as ONNX at path (atomically); returns a description of how it was exported."""
    model = model.eval().cpu()
    shape = model.input_shape
    sequence = model.name in RECURRENT
    example = torch.zeros(2, *shape)
    exporter = _exporter_for(model)

    def write(tmp: Path) -> None:
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the exporter logs every optional op library it skips
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
                if sequence:
                    dims[1] = torch.export.Dim("sequence", min=1, max=MAX_SEQ)
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=True,
                    external_data=False,
                    input_names=[INPUT],
                    output_names=[OUTPUT],
                    dynamic_shapes=(dims,),
                    opset_version=OPSET,
                    optimize=True,
                    verbose=False,
                )
            else:
                axes = {0: "batch", 1: "sequence"} if sequence else {0: "batch"}
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    input_names=[INPUT],
                    output_names=[OUTPUT],
                    opset_version=17,
                    dynamic_axes={INPUT: axes, OUTPUT: {0: "batch"}},
                )
        quiet.setLevel(level)
        proto = onnx.load(str(tmp), load_external_data=True)
        _name_dims(proto, sequence)
        set_metadata(proto, metadata)
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        check_model(tmp)

    try:
        atomic_write(path, write)
    except NnshipError:
        raise
    except Exception as e:
        raise NnshipError(f"ONNX export of {model.name} failed: {type(e).__name__}: {e}") from e
    return {
        "exporter": exporter,
        "opset": onnx.load(str(path)).opset_import[0].version,
        "dynamic_axes": ["batch", "sequence"] if sequence else ["batch"],
    }


def _name_dims(proto: onnx.ModelProto, sequence: bool) -> None:
    """Give the dynamic axes stable names (batch, sequence) whatever the exporter called them."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    if sequence:
        dims[1].dim_param = "sequence"
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Store metadata as ONNX metadata_props (strings; non-strings as JSON)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if key in existing:
            existing[key].value = text
        else:
            proto.metadata_props.add(key=key, value=text)


def check_model(path: Path) -> None:
    """onnx.checker (full) and strict shape inference must both pass."""
    proto = onnx.load(str(path), load_external_data=False)
    external = [
        t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise NnshipError(
            f"{path.name}: weights stored outside the file ({', '.join(external[:3])})"
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
    except Exception as e:
        raise NnshipError(f"{path.name}: ONNX check failed: {e}") from e


def read_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
