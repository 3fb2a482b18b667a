"""`nnship export --out` never destroys what it did not write, and every artifact is world-readable."""

import json
import os
import shutil
import stat
from pathlib import Path

import bentoml
import pytest

from nnship.cli import main
from nnship.export.package import ExportOptions, export_run
from nnship.training.train import TrainConfig, train

FAST = dict(variants=("fp32",), bench_seconds=0.02, max_batch=50, threads=1)


def _export(capsys, *argv):
    rc = main(["export", *argv, "--variants", "fp32", "--threads", "1", "--no-store"])
    return rc, capsys.readouterr().err.strip()


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes: to prove that nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def run(tiny_run, tmp_path):
    """A private copy of the tiny run: a failing test may destroy it."""
    return Path(shutil.copytree(tiny_run, tmp_path / "runs" / "iris", ignore=_no_package))


def _no_package(folder, names):
    return ["package"] if Path(folder).name == "iris" else []


@pytest.fixture
def package(run, tmp_path):
    """An existing package at an explicit --out."""
    out = tmp_path / "pkg"
    export_run(ExportOptions(str(run), out=str(out), store=False, **FAST))
    return out


def test_existing_out_refused_without_overwrite(capsys, run, package):
    before = _snapshot(package)
    rc, err = _export(capsys, str(run), "--out", str(package))
    assert rc == 2 and "\n" not in err, err
    assert f"--out {package} already exists; pass --overwrite to replace it" in err
    assert _snapshot(package) == before


def test_overwrite_replaces_a_package(capsys, run, package):
    old = json.loads((package / "manifest.json").read_text())
    (package / "stale.txt").write_text("from the old package")
    rc, err = _export(capsys, str(run), "--out", str(package), "--overwrite")
    assert rc == 0, err
    new = json.loads((package / "manifest.json").read_text())
    assert new["variants"]["fp32"]["shipped"] and not (package / "stale.txt").exists()
    assert new["created"] >= old["created"]
    assert not [p.name for p in package.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_run_and_its_parents_never_replaced(capsys, run, overwrite):
    for target in (str(run), str(run.parent), f"{run}/", f"{run}/../{run.name}", f"{run}/."):
        before = _snapshot(run)
        rc, err = _export(capsys, str(run), "--out", target, *overwrite)
        assert rc == 2 and "\n" not in err, err
        assert "is the run directory or holds it; it is never replaced" in err
        assert _snapshot(run) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_non_package_never_deleted(capsys, run, tmp_path, overwrite):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("precious")
    (mine / "sub" / "data.bin").write_bytes(b"\0" * 10)
    other = tmp_path / "other-manifest"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "someone-else/1"}))
    broken = tmp_path / "broken-manifest"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for target in (mine, other, broken, a_file):
        before = _snapshot(target) if target.is_dir() else target.read_bytes()
        rc, err = _export(capsys, str(run), "--out", str(target), *overwrite)
        assert rc == 2 and "\n" not in err, err
        assert f"--out {target} exists and is not an nnship model package" in err
        assert (_snapshot(target) if target.is_dir() else target.read_bytes()) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_store_never_an_out(capsys, run, package, overwrite):
    """A store entry holds a package manifest too: it must not be replaced behind BentoML's back."""
    export_run(ExportOptions(str(run), name="safety-store", store=True, **FAST))
    entry = Path(bentoml.models.get("safety-store:latest").path)
    before = _snapshot(entry)
    capsys.readouterr()  # what the export logged
    for target in (entry, entry / "sub", Path(os.environ["BENTOML_HOME"]) / "models"):
        rc, err = _export(capsys, str(run), "--out", str(target), *overwrite)
        assert rc == 2 and "is inside the BentoML model store" in err and "\n" not in err, err
    assert _snapshot(entry) == before


def test_symlink_out_refused(capsys, run, package, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(package)
    rc, err = _export(capsys, str(run), "--out", str(link), "--overwrite")
    assert rc == 2 and "is a symbolic link" in err and "\n" not in err
    assert link.is_symlink() and (package / "manifest.json").is_file()


def test_default_out_is_reexported(capsys, run):
    """RUN/package is derived from the run: a second export replaces it without --overwrite."""
    for _ in range(2):
        rc, err = _export(capsys, str(run))
        assert rc == 0, err
        assert json.loads((run / "package" / "manifest.json").read_text())["model"] == "iris"
    assert (run / "checkpoint.safetensors").is_file()
    (run / "package" / "manifest.json").unlink()  # no longer a package: never replaced
    rc, err = _export(capsys, str(run))
    assert rc == 2 and "is not an nnship model package" in err


def _modes(root: Path) -> dict[str, str]:
    """Each path under root (and root itself) with its permission bits in octal."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths}


def _expected(root: Path, file: str, folder: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): folder if p.is_dir() else file for p in [root, *root.rglob("*")]
    }


@pytest.mark.parametrize(
    ("umask", "file", "folder"), [(0o022, "0o644", "0o755"), (0o027, "0o640", "0o750")]
)
def test_artifacts_have_the_umask_modes(tmp_path, umask, file, folder):
    """A run, its package and the store entry: files 0644 and folders 0755 under umask 022."""
    old = os.umask(umask)
    try:
        run = tmp_path / "runs" / "perm"
        train(TrainConfig(model="mlp", dataset="iris", epochs=1, out=str(run)))
        m = export_run(ExportOptions(str(run), name=f"perm-{umask:o}", **FAST))
    finally:
        os.umask(old)
    entry = Path(bentoml.models.get(f"perm-{umask:o}:{m.version}").path)
    for root in (run, run / "package", entry):
        assert _modes(root) == _expected(root, file, folder), root
