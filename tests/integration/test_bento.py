"""Bentos: `nnship build MODEL:VERSION` and `bentoml build` from the repository."""

import json
import os
import subprocess
import sys
from pathlib import Path

import bentoml

ROOT = Path(__file__).resolve().parents[2]


def bentoml_cli(*args: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def listed() -> dict[str, dict]:
    return {b["tag"]: b for b in json.loads(bentoml_cli("list", "-o", "json"))}


def serving_sources(tag: str) -> set[str]:
    src = Path(bentoml.bentos.get(tag).path) / "src"
    return {p.relative_to(src).as_posix() for p in src.rglob("*.py")}


def test_nnship_build_holds_the_service_and_the_model(iris_package):
    model = f"iris-served:{iris_package['version']}"
    out = subprocess.run(
        [sys.executable, "-m", "nnship.cli", "build", model, "--version", "t1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1]
    assert tag == "nnship:t1" and tag in listed()
    info = bentoml.bentos.get(tag).info
    assert [str(m.tag) for m in info.all_models] == [model]
    assert {e.name: e.value for e in info.envs} == {"NNSHIP_MODEL": model}
    assert info.service == "nnship.service.service:NnshipService"
    sources = serving_sources(tag)
    assert {
        "nnship/contracts.py",
        "nnship/service/service.py",
        "nnship/service/drift.py",
    } <= sources
    assert not any(s.startswith(("nnship/training", "nnship/export")) for s in sources)
    requirements = (Path(bentoml.bentos.get(tag).path) / "env/python/requirements.txt").read_text()
    assert "onnxruntime" in requirements and "bentoml==1.4.40" in requirements
    assert "torch" not in requirements


def test_bentoml_build_from_the_repository(iris_package):
    model = f"iris-served:{iris_package['version']}"
    before = set(listed())
    bentoml_cli("build", "--output", "tag", NNSHIP_MODEL=model)
    (tag,) = set(listed()) - before
    assert [str(m.tag) for m in bentoml.bentos.get(tag).info.all_models] == [model]
    assert {"nnship/contracts.py", "service/service.py"} <= serving_sources(tag)
