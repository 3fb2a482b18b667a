"""Optimization variants of an exported model: fp32 (offline graph optimization), int8, fp16."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from nnship.export.onnx_export import check_model, read_metadata, set_metadata
from nnship.io import atomic_write
from nnship.onnxrt import CPU, session_options

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "int8-dynamic", "int8-static", "fp16")


class _Calibration(CalibrationDataReader):
    """Feeds calibration rows (training split only) in small batches."""

    def __init__(self, x: np.ndarray, batch: int = 64):
        self._batches: Iterator[np.ndarray] = iter(
            [x[i : i + batch] for i in range(0, len(x), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._batches, None)
        return None if nxt is None else {"input": nxt}


def _finish(tmp: Path, source: Path) -> None:
    """Carry the source's metadata into a derived model, save it single-file, and check it."""
    proto = onnx.load(str(tmp))
    set_metadata(proto, read_metadata(source))
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    check_model(tmp)


def build_fp32(raw: Path, out: Path) -> None:
    """Offline graph optimization saved at the 'basic' level: only rewrites that hold on every
    provider and CPU (constant folding, redundant-node removal); layout and fused-kernel rewrites
    of the higher levels are left to the serving machine's session."""

    def write(tmp: Path) -> None:
        so = session_options(1, "basic")
        so.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(raw), so, providers=[CPU])
        _finish(tmp, raw)

    atomic_write(out, write)


def _preprocessed(raw: Path, workdir: Path) -> Path:
    pre = workdir / "pre.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(raw), str(pre), skip_symbolic_shape=False)
    return pre


def build_int8_dynamic(raw: Path, out: Path) -> None:
    """Weights int8 ahead of time, activations quantized on the fly (MatMul/Gemm, LSTM, GRU...)."""

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            pre = _preprocessed(raw, Path(work))
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=False)
        _finish(tmp, raw)

    atomic_write(out, write)


def build_int8_static(raw: Path, out: Path, calibration: np.ndarray) -> None:
    """QDQ int8 with per-channel weights, activation ranges calibrated on training rows."""

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            pre = _preprocessed(raw, Path(work))
            quantize_static(
                str(pre),
                str(tmp),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        _finish(tmp, raw)

    atomic_write(out, write)


def build_fp16(raw: Path, out: Path) -> None:
    """Float16 weights and compute, float32 inputs and outputs kept (for GPU execution)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto = convert_float_to_float16(onnx.load(str(raw)), keep_io_types=True)
            wrapped = OnnxModel(proto)
            wrapped.topological_sort()  # the converter appends its boundary casts at the end
            proto = wrapped.model
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        _finish(tmp, raw)

    atomic_write(out, write)


def build_variant(name: str, raw: Path, out: Path, calibration: np.ndarray) -> None:
    if name == "fp32":
        build_fp32(raw, out)
    elif name == "int8-dynamic":
        build_int8_dynamic(raw, out)
    elif name == "int8-static":
        build_int8_static(raw, out, calibration)
    elif name == "fp16":
        build_fp16(raw, out)
    else:
        raise ValueError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
