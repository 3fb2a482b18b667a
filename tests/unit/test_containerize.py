"""What the serving image installs: the serving requirements, never torch."""

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import yaml

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


def _distribution(requirement: str) -> str:
    """A requirement's distribution name, normalised; the GPU build of ONNX Runtime is the same one."""
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
    return name.removesuffix("-gpu")


def _installed_with(names: set[str]) -> set[str]:
    """`names` and what they require in turn (extras aside)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            requires = metadata.requires(f"{name}-gpu") or [] if name == "onnxruntime" else []
        todo += [_distribution(r) for r in requires if "extra ==" not in r]
    return found


def test_serving_requirements_cover_every_import_of_the_serving_code():
    """Every third-party module the image's code (nnship/*.py, service/*.py) imports is installed by
    the serving requirements (or what they require); the Bento's list is the same one."""
    root = Path(__file__).resolve().parents[2]
    imported: dict[str, str] = {}
    for path in [*root.joinpath("nnship").glob("*.py"), *root.joinpath("service").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for m in modules:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top != "nnship":
                    imported.setdefault(top, path.name)
    provided = _installed_with({_distribution(r) for r in SERVING_REQUIREMENTS})
    dists = metadata.packages_distributions()
    missing = {
        module: where
        for module, where in imported.items()
        if not {_distribution(d) for d in dists.get(module, [module])} & provided
    }
    assert not missing, f"imported by the serving code but not installed in the image: {missing}"
    bentofile = yaml.safe_load((root / "bentofile.yaml").read_text())
    assert bentofile["python"]["packages"] == list(SERVING_REQUIREMENTS)
