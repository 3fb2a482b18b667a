"""What the serving image installs: the serving requirements, never torch."""

from nnship.service.build import SERVING_REQUIREMENTS
from nnship.service.containerize import GPU_RUNTIME, requirements


def test_cpu_and_gpu_requirements():
    cpu, gpu = requirements(gpu=False), requirements(gpu=True)
    assert cpu == list(SERVING_REQUIREMENTS) and "onnxruntime>=1.20" in cpu
    assert GPU_RUNTIME in gpu and not any(r.startswith("onnxruntime>") for r in gpu)
    assert [r for r in cpu if not r.startswith("onnxruntime")] == [
        r for r in gpu if not r.startswith("onnxruntime")
    ]
    assert not any("torch" in r for r in cpu + gpu)
