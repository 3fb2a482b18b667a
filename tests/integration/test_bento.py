"""Bentos: `nnship build MODEL:VERSION`, `bentoml build` from the repository, and `bentoml
containerize` of a Bento that carries its wheels."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import httpx

from nnship.numeric import softmax
from nnship.probe import wait_ready
from nnship.service.runtime import load_runtime
from nnship.service.settings import Settings
from nnship.training.data import load_dataset, split
from tests.server import free_port, missing_tool

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "container" / "containers.conf"


def bentoml_cli(*args: str, timeout: float = 300, cwd: Path = ROOT, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
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


def test_bentoml_containerize_builds_offline_with_podman(iris_package):
    """`nnship build --wheelhouse` carries the serving wheels and a template installing them, so
    `bentoml containerize --backend podman` builds with no package index or registry; the image
    serves what the in-process runtime answers."""
    if shutil.which("podman") is None:
        missing_tool("podman is not installed (CI installs it: .ci/run)")
    env = {"CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF") or str(CONTAINERS_CONF)}
    model = f"iris-served:{iris_package['version']}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnship.cli",
            "build",
            model,
            "--version",
            "offline",
            "--wheelhouse",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    wheels = Path(bentoml.bentos.get("nnship:offline").path) / "env/python/wheels"
    assert {w.name.split("-")[0] for w in wheels.glob("*.whl")} >= {"onnxruntime", "bentoml"}
    image = "localhost/nnship-bento-test:offline"
    # BentoML 1.4.40 refuses the Bento's template when the build context it copies the Bento to (a
    # temporary folder) is not below the working directory (bentoml/BentoML#5566): run it from /
    bentoml_cli(
        "containerize", "nnship:offline", "--backend", "podman", "-t", image,
        timeout=900, cwd=Path("/"), **env,
    )  # fmt: skip
    port, name = free_port(), f"nnship-bento-test-{os.getpid()}"
    podman = ["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", image]
    try:
        subprocess.run(podman, env={**os.environ, **env}, check=True, capture_output=True)
        url = f"http://127.0.0.1:{port}"
        assert wait_ready(f"{url}/readyz", timeout=120), container_logs(name, env)
        x = split(load_dataset("iris")).x_test
        body = httpx.post(f"{url}/predict", json={"inputs": x.tolist()}, timeout=30).json()
        runtime = load_runtime(Settings(model=model, threads=1, variant=body["variant"]))
        labels = iris_package["output"]["labels"]
        assert body["predictions"] == [labels[i] for i in softmax(runtime.run(x)).argmax(1)]
    finally:
        for cmd in (["rm", "-f", name], ["rmi", "-f", image]):
            subprocess.run(["podman", *cmd], env={**os.environ, **env}, capture_output=True)


def container_logs(name: str, env: dict[str, str]) -> str:
    logs = subprocess.run(
        ["podman", "logs", name], env={**os.environ, **env}, capture_output=True, text=True
    )
    return (logs.stdout + logs.stderr)[-3000:]
