"""ONNX Runtime sessions with explicit providers and thread counts, shared by export, the service
and batch jobs."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from nnship.cpus import usable_cores

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)


def session_options(threads: int, level: str = "all", spin: bool = True) -> ort.SessionOptions:
    """intra-op threads set explicitly (ONNX Runtime ignores OMP_NUM_THREADS), one inter-op thread;
    spin=False stops idle pool threads from busy-waiting (a server shares its cores with the event loop)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def nvidia_device_present() -> bool:
    """Whether the kernel shows an NVIDIA device (GPU providers are tried only then)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def wanted_providers(available: list[str], gpu: bool, tensorrt: bool = False) -> list[str]:
    """TensorRT (opt-in) -> CUDA -> CPU, keeping only what this onnxruntime build offers and
    trying GPU providers only when `gpu` says a device is there."""
    order = ([TENSORRT] if tensorrt and gpu else []) + ([CUDA] if gpu else []) + [CPU]
    return [p for p in order if p in available or p == CPU]


def batch_coupled_ops(model: bytes) -> list[str]:
    """Operators in a serialized ONNX model that make a row's output depend on the other rows of
    its batch: dynamic quantization derives one scale and zero point from the whole input tensor
    (DynamicQuantizeLinear and its fused forms), so a row's answer moves with its batch-mates."""
    import onnx

    proto = onnx.load_model_from_string(model)
    ops: set[str] = set()
    graphs = [proto.graph, *proto.functions]  # functions hold nodes the same way graphs do
    while graphs:
        for node in graphs.pop().node:
            ops.add(node.op_type)
            for a in node.attribute:  # If/Loop/Scan bodies
                graphs.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)
    return sorted(op for op in ops if op.startswith("DynamicQuantize"))


def cpu_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A session on the CPU provider with `threads` intra-op threads (default: all cores)."""
    threads = threads or usable_cores()
    return ort.InferenceSession(str(path), session_options(threads), providers=[CPU])
