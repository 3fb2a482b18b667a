"""The built wheel, installed on its own: one package `nnship`, nothing named `models` or `service`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("models", "training", "export", "service", "loadtests", "batch")
SUBPACKAGES = tuple(f"nnship.{name}" for name in TOP_LEVEL)


def _source_copy(dest: Path) -> Path:
    """The files the build reads, copied: a stale build/ or egg-info in the checkout cannot leak in."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(config["tool"]["setuptools"]["package-dir"].values())
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in folders:
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel and a fresh venv with only it installed (its dependencies come from this env)."""
    root = tmp_path_factory.mktemp("wheel")
    src = _source_copy(root / "src")
    dist = root / "dist"
    run = dict(capture_output=True, text=True, timeout=180)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            ".",
        ],
        cwd=src,
        **run,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("nnship-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, **run)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            "--no-index",
            str(wheel),
        ],
        **run,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # this env's site-packages through PYTHONPATH: no .pth processing, so the editable install
    # (a meta-path finder set up by a .pth) stays out and `nnship` can only come from the wheel
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=os.pathsep.join(sorted(deps)), PYTHONNOUSERSITE="1")
    cwd = root / "elsewhere"
    cwd.mkdir()
    return wheel, venv, env, cwd


def _run(cmd, env, cwd):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_wheel_holds_only_the_nnship_package(installed):
    wheel = installed[0]
    with zipfile.ZipFile(wheel) as zf:
        (record,) = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        paths = [line.split(",")[0] for line in zf.read(record).decode().splitlines() if line]
    tops = {p.split("/")[0] for p in paths}
    assert tops == {"nnship", record.split("/")[0]}, sorted(tops)
    for name in TOP_LEVEL:
        assert f"nnship/{name}/__init__.py" in paths
    assert "nnship/loadtests/schemathesis.toml" in paths  # package data read at run time
    assert "nnship/loadtests/locustfile.py" in paths


def test_installed_wheel_imports_as_nnship_only(installed):
    _, venv, env, cwd = installed
    probe = (
        "import importlib.util, json, sys\n"
        f"tops = {TOP_LEVEL!r}\n"
        f"subs = {SUBPACKAGES!r}\n"
        "print(json.dumps({\n"
        "    'top': {n: importlib.util.find_spec(n) is not None for n in tops},\n"
        "    'sub': {n: importlib.util.find_spec(n).origin for n in subs},\n"
        "    'service': importlib.util.find_spec('nnship.service.service').origin,\n"
        "    'prefix': sys.prefix,\n"
        "}))\n"
    )
    proc = _run([str(venv / "bin" / "python"), "-c", probe], env, cwd)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert not any(found["top"].values()), found["top"]
    site = Path(found["prefix"]).resolve()
    assert site == venv.resolve()
    for name, origin in found["sub"].items():
        assert Path(origin).resolve().is_relative_to(site), (name, origin)
    service = Path(found["service"]).resolve()
    assert service.is_relative_to(site) and service.parts[-3:] == (
        "nnship",
        "service",
        "service.py",
    )


@pytest.mark.parametrize("command", ["train", "export", "serve", "predict"])
def test_installed_console_script_help(installed, command):
    _, venv, env, cwd = installed
    proc = _run([str(venv / "bin" / "nnship"), command, "--help"], env, cwd)
    assert proc.returncode == 0, proc.stderr
    assert f"usage: nnship {command}" in proc.stdout
