"""`nnship containerize MODEL[:VERSION]`: an OCI serving image built with Podman or Docker.

Everything the image installs comes from a wheelhouse prepared on the host with the host's own pip
configuration (proxies, certificate authorities, mirrors), so the build itself needs no network;
the wheelhouse is cached per requirement set and reused. The base image is a build argument; the
default, a Debian image built from Debian's packages, is made by deploy/container/base-image.sh
when missing. The recipe is deploy/container/Containerfile."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from nnship.errors import NnshipError
from nnship.service.build import SERVING_REQUIREMENTS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "deploy" / "container"
DEFAULT_BASE = "localhost/nnship-debian:bookworm"
GPU_RUNTIME = "onnxruntime-gpu[cuda,cudnn]>=1.20"  # CUDA and cuDNN from their pip wheels


def engine() -> str:
    """podman, else docker: the first one installed."""
    found = shutil.which("podman") or shutil.which("docker")
    if found is None:
        raise NnshipError("containerize needs Podman or Docker; neither is installed")
    return found


def requirements(gpu: bool) -> list[str]:
    """The image's Python requirements: the serving set, with the GPU build of ONNX Runtime."""
    if not gpu:
        return list(SERVING_REQUIREMENTS)
    return [GPU_RUNTIME if r.startswith("onnxruntime") else r for r in SERVING_REQUIREMENTS]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnship"


def wheelhouse(reqs: list[str]) -> Path:
    """Wheels of `reqs` and their dependencies, downloaded once per requirement set."""
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    folder = cache_dir() / f"wheelhouse-{key}"
    done = folder / ".complete"
    if done.is_file() and done.read_text() == "\n".join(reqs) + "\n":
        log.info("reusing the wheelhouse %s", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    pip(["download", "--only-binary=:all:", "--dest", str(folder), *reqs])
    done.write_text("\n".join(reqs) + "\n")
    return folder


def pip(args: list[str]) -> None:
    """The host's pip, with the host's configuration; its last lines on failure."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise NnshipError(f"pip {args[0]} failed: {tail}")


def model_package(ref: str) -> tuple[Path, str]:
    """(the package folder, a name:version) for a stored model or a package directory."""
    if Path(ref).is_dir():
        return Path(ref), Path(ref).resolve().name
    from nnship.package import stored_model

    model = stored_model(ref)
    return Path(model.path), str(model.tag)


def base_image(image: str | None, tool: str) -> str:
    """The base image: the one given, or the Debian default (built here when missing)."""
    if image:
        return image
    if subprocess.run([tool, "image", "inspect", DEFAULT_BASE], capture_output=True).returncode:
        log.info("building the base image %s with debootstrap", DEFAULT_BASE)
        done = subprocess.run(
            [str(RECIPE / "base-image.sh"), DEFAULT_BASE],
            env={**os.environ, "ENGINE": tool},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise NnshipError(
                f"base image {DEFAULT_BASE} could not be built: {done.stderr.strip()[-500:]}"
            )
    return DEFAULT_BASE


def context(folder: Path, package: Path, reqs: list[str]) -> None:
    """Fill the build context: the recipe, the wheelhouse (hard links), nnship's wheel, the model."""
    shutil.copy2(RECIPE / "Containerfile", folder / "Containerfile")
    (folder / "requirements.txt").write_text("\n".join(reqs) + "\n")
    wheels = folder / "wheelhouse"
    shutil.copytree(
        wheelhouse(reqs), wheels, copy_function=os.link, ignore=lambda *_: [".complete"]
    )
    nnship_wheel(folder / "nnship-src", wheels)
    shutil.copytree(package, folder / "model")


def nnship_wheel(src: Path, wheels: Path) -> None:
    """nnship's own wheel, built from a copy of its sources (the checkout gets no build/ folder)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *folders):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name)
    pip(["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(src)])
    shutil.rmtree(src)


def containerize(
    ref: str, gpu: bool = False, base: str | None = None, tag: str | None = None
) -> str:
    """Build the serving image for model `ref`; returns its tag."""
    if not (RECIPE / "Containerfile").is_file():
        raise NnshipError(f"{RECIPE / 'Containerfile'}: missing; containerize runs from a checkout")
    package, name = model_package(ref)  # a missing model is named whether or not an engine is
    tool = engine()
    tag = tag or f"localhost/nnship-{name.replace(':', ':v-')}{'-gpu' if gpu else ''}".lower()
    with tempfile.TemporaryDirectory(prefix="nnship-image-") as tmp:
        context(Path(tmp), package, requirements(gpu))
        cmd = [tool, "build", "--build-arg", f"BASE_IMAGE={base_image(base, tool)}", "-t", tag]
        if Path(tool).name == "podman":
            cmd += ["--format", "docker"]  # keeps HEALTHCHECK, which the OCI format drops
        done = subprocess.run([*cmd, tmp], capture_output=True, text=True)
    if done.returncode != 0:
        raise NnshipError(f"{Path(tool).name} build failed: {done.stderr.strip()[-1500:]}")
    log.info("built %s serving %s", tag, name)
    return tag


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="MODEL[:VERSION] in the BentoML model store, or a package folder")
    p.add_argument("--gpu", action="store_true", help="onnxruntime-gpu with CUDA from pip wheels")
    p.add_argument("--base-image", help=f"base image with python3 (default {DEFAULT_BASE})")
    p.add_argument("--tag", help="the image's tag (default localhost/nnship-MODEL:v-VERSION)")


def run(args: argparse.Namespace) -> int:
    print(containerize(args.model, args.gpu, args.base_image, args.tag))
    return 0
