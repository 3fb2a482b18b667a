"""The inference runtime: a verified package, an ONNX Runtime session on the best provider that
really runs, explicit threads, IO binding on CUDA, and a warm-up over the batch-size buckets."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from nnship.contracts import Manifest
from nnship.errors import NnshipError
from nnship.onnxrt import (
    CPU,
    GPU_PROVIDERS,
    batch_coupled_ops,
    nvidia_device_present,
    session_options,
    wanted_providers,
)
from nnship.package import Package, graph_mismatch, load_package, one_line
from nnship.service.settings import Settings

log = logging.getLogger(__name__)


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch: the sizes adaptive batching will form."""
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch]


@dataclass
class Runtime:
    package: Package
    variant: str
    provider: str
    session: ort.InferenceSession
    threads: int
    sha256: str
    coupled_ops: tuple[str, ...] = ()  # operators that tie a row's output to its batch-mates

    @property
    def batch_independent(self) -> bool:
        """True when a row's output does not depend on the other rows run with it."""
        return not self.coupled_ops

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def run(self, x: np.ndarray) -> np.ndarray:
        """(N, *input_shape) float32 -> (N, outputs) float32."""
        if not self.on_gpu:
            return self.session.run(None, {"input": x})[0]
        # inputs copied to the device once, outputs read back once
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output("output", "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def warm_up(self, max_batch: int) -> list[int]:
        shape = self.manifest.input.shape
        sizes = bucket_sizes(max_batch)
        for n in sizes:
            self.run(np.zeros((n, *shape), dtype=np.float32))
        return sizes


def _session(
    package: Package, variant: str, settings: Settings, providers: list[str]
) -> tuple[ort.InferenceSession, tuple[str, ...]]:
    """Read the variant once, check those very bytes against the manifest, and load them; also
    the graph's batch-coupling operators."""
    path = package.variant_path(variant)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != package.manifest.variants[variant].sha256:
        raise NnshipError(f"{path}: sha256 mismatch; the file was modified or truncated")
    opts = session_options(settings.intra_op_threads, spin=False)
    provider_options = [{"device_id": 0} if p in GPU_PROVIDERS else {} for p in providers]
    try:
        session = ort.InferenceSession(
            data, opts, providers=providers, provider_options=provider_options
        )
    except Exception as e:  # e.g. an operator this onnxruntime build lacks
        raise NnshipError(f"{path.name}: ONNX Runtime cannot load it: {one_line(str(e))}") from e
    problem = graph_mismatch(
        package.manifest,
        {i.name: list(i.shape) for i in session.get_inputs()},
        {o.name: list(o.shape) for o in session.get_outputs()},
    )
    if problem is not None:
        raise NnshipError(f"{path}: the manifest does not match the ONNX model: {problem}")
    return session, tuple(batch_coupled_ops(data))


def load_runtime(settings: Settings) -> Runtime:
    """Verify the package, pick the variant and provider, and prove which provider really runs."""
    available = ort.get_available_providers()
    gpu_present = nvidia_device_present() or settings.require_gpu
    wanted = wanted_providers(available, gpu_present, settings.tensorrt)
    # the package's manifest now; each variant's bytes are hashed as _session loads them
    package = load_package(settings.model, variants=[])
    manifest = package.manifest
    gpu_capable = wanted[0] != CPU
    variant = package.choose_variant(settings.variant, gpu_capable)
    session, coupled = _session(package, variant, settings, wanted)
    active = session.get_providers()[0]
    if gpu_capable and active == CPU:
        # onnxruntime falls back to the CPU silently when CUDA libraries are missing: say so loudly
        log.warning(
            "%s is installed but not active (CUDA/cuDNN libraries missing?); running on CPU",
            wanted[0],
        )
        if settings.variant == "auto" and variant != manifest.default_variant:
            variant = manifest.default_variant
            session, coupled = _session(package, variant, settings, [CPU])
    if settings.require_gpu and active not in GPU_PROVIDERS:
        why = (
            "no NVIDIA device is visible"
            if not nvidia_device_present()
            else "the CUDA provider failed to start (are the CUDA 13 and cuDNN 9 libraries installed?)"
        )
        raise NnshipError(f"--require-gpu: the model runs on {active}, not CUDA: {why}")
    rt = Runtime(
        package,
        variant,
        session.get_providers()[0],
        session,
        settings.intra_op_threads,
        manifest.variants[variant].sha256 or "",
        coupled,
    )
    log.info(
        "serving %s variant %s on %s with %d intra-op threads",
        package.tag,
        variant,
        rt.provider,
        rt.threads,
    )
    if coupled:
        log.info(
            "variant %s quantizes activations per batch (%s): each request runs on its own, so an "
            "answer never depends on the requests batched with it",
            variant,
            ", ".join(coupled),
        )
    return rt
