"""What the serving image installs: the serving requirements, never torch."""

import ast
import sys
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from nnship.service.build import SERVING_REQUIREMENTS
from nnship.service.containerize import GPU_RUNTIME, requirements

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_and_gpu_requirements():
    cpu, gpu = requirements(gpu=False), requirements(gpu=True)
    assert cpu == list(SERVING_REQUIREMENTS) and "onnxruntime>=1.20" in cpu
    assert GPU_RUNTIME in gpu and not any(r.startswith("onnxruntime>") for r in gpu)
    assert [r for r in cpu if not r.startswith("onnxruntime")] == [
        r for r in gpu if not r.startswith("onnxruntime")
    ]
    assert not any("torch" in r for r in cpu + gpu)


def imported_modules(folder: Path) -> set[str]:
    """Top-level modules imported anywhere in folder/*.py (module level or inside functions)."""
    found = set()
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install, their dependencies included (as installed here;
    one not installed here counts without its dependencies)."""
    names = [Requirement(r).name for r in requirements]
    seen: set[str] = set()
    while names:
        name = canonicalize_name(names.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                names.append(req.name)
    return seen


def test_the_serving_requirements_cover_what_the_serving_code_imports():
    """The serving image and the Bento install SERVING_REQUIREMENTS only: every module nnship's
    bottom layer and service import comes from them or the standard library."""
    modules = imported_modules(ROOT / "nnship") | imported_modules(ROOT / "service")
    third_party = modules - set(sys.stdlib_module_names) - {"nnship", "torch"}
    provides = metadata.packages_distributions()
    # this environment has either onnxruntime or onnxruntime-gpu: either image's set may provide it
    closure = installed_closure(requirements(gpu=False)) | installed_closure(requirements(gpu=True))
    missing = {m for m in third_party if not {canonicalize_name(d) for d in provides[m]} & closure}
    assert missing == set(), f"served code imports {missing}, not in SERVING_REQUIREMENTS"


def test_bentofile_lists_the_serving_requirements():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["packages"] == list(SERVING_REQUIREMENTS)
