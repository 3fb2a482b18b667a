"""`nnship models list | prune`, `nnship --version`, and the error for a model the store lacks."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import bentoml
import pytest

import nnship
from nnship.contracts import MANIFEST, PACKAGE_FORMAT, as_json
from nnship.errors import NnshipError
from nnship.io import atomic_write_json
from nnship.package import load_package
from nnship.store import packages, prune
from tests.manifests import manifest
from tests.server import free_port


def _saved(name: str, default: str = "fp32", payload: int = 10) -> str:
    """A small nnship package saved in the test process's model store; returns its tag."""
    with bentoml.models.create(name) as bm:
        Path(bm.path_of("fp32.onnx")).write_bytes(b"x" * payload)
        record = as_json(manifest())
        record["variants"][default] = {**record["variants"]["fp32"], "file": f"{default}.onnx"}
        record |= {
            "format": PACKAGE_FORMAT,
            "model": name,
            "version": bm.tag.version,
            "default_variant": default,
        }
        atomic_write_json(bm.path_of(MANIFEST), record)
    return f"{name}:{bm.tag.version}"


def _foreign(name: str) -> str:
    """A store model that is not an nnship package."""
    with bentoml.models.create(name) as bm:
        Path(bm.path_of("weights.bin")).write_bytes(b"w")
    return str(bm.tag)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    return subprocess.run(
        [sys.executable, "-m", "nnship.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_version_prints_the_package_version():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"nnship {nnship.__version__}"


def test_list_shows_nnship_packages_newest_first_and_leaves_out_other_models():
    name, other = _unique("listed"), _unique("foreign")
    old = _saved(name, payload=10)
    new = _saved(name, default="int8-dynamic", payload=2000)
    foreign = _foreign(other)
    mine = [s for s in packages() if s.name == name]
    assert [s.tag for s in mine] == [new, old]
    assert [s.default_variant for s in mine] == ["int8-dynamic", "fp32"]
    for s in mine:  # every file of the stored entry: variants, manifest, BentoML's model.yaml
        files = Path(bentoml.models.get(s.tag).path).iterdir()
        assert s.size_bytes == sum(f.stat().st_size for f in files) > 10
    proc = _cli("models", "list")  # not a terminal: tab-separated lines
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    ours = [cells for cells in lines if cells[0].startswith(f"{name}:")]
    assert [(c[0], c[3]) for c in ours] == [(new, "int8-dynamic"), (old, "fp32")]
    assert int(ours[0][2]) == mine[0].size_bytes
    assert not any(cells[0] == foreign for cells in lines)


def test_prune_keeps_the_newest_and_never_touches_other_models():
    name, neighbour, other = _unique("pruned"), _unique("neighbour"), _unique("foreign")
    tags = [_saved(name) for _ in range(4)]
    spared = _saved(neighbour)
    foreign = _foreign(other)
    proc = _cli("models", "prune", name, "--keep", "2")
    assert proc.returncode == 0, proc.stderr
    deleted = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("deleted ")]
    assert sorted(deleted) == sorted(tags[:2])
    assert f"{name}: deleted 2, kept 2: {tags[3]}, {tags[2]}" in proc.stdout
    assert [s.tag for s in packages(name)] == [tags[3], tags[2]]
    assert [s.tag for s in packages(neighbour)] == [spared]
    assert str(bentoml.models.get(foreign).tag) == foreign
    assert prune(name, 5) == ([], packages(name))  # fewer versions than --keep: nothing deleted


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep", "0"], "--keep 0: keep at least 1 version"),
        (["--keep", "-3"], "--keep -3: keep at least 1 version"),
    ],
)
def test_prune_refuses_to_keep_fewer_than_one(argv, message):
    name = _unique("kept")
    tag = _saved(name)
    proc = _cli("models", "prune", name, *argv)
    assert proc.returncode == 2 and proc.stderr.strip() == f"nnship: error: {message}"
    assert [s.tag for s in packages(name)] == [tag]


def test_prune_of_a_version_or_an_unknown_model_is_refused():
    with pytest.raises(NnshipError, match=r"name a model, not a version"):
        prune("some-model:v1", 1)
    with pytest.raises(NnshipError, match=r"no model 'absent-model' in the store; nnship models"):
        prune("absent-model", 1)


def test_a_model_the_store_lacks_is_refused_naming_the_ones_it_holds():
    present = _saved(_unique("present"))
    with pytest.raises(NnshipError) as e:
        load_package("missing-model:latest")
    message = str(e.value)
    assert message.startswith("model missing-model:latest is not in the BentoML model store; ")
    assert "nnship models in the store: " in message and present in message


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "missing-model", "--port", str(free_port())],
        ["build", "missing-model"],
        ["containerize", "missing-model"],
        ["predict", "missing-model", "--input", "rows.csv", "--output", "out.csv"],
    ],
    ids=lambda c: c[0],
)
def test_every_command_refuses_a_missing_model_naming_the_available(tmp_path, command):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "empty-home")}
    (tmp_path / "rows.csv").write_text("a\n1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nnship.cli", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "nnship: error: model missing-model is not in the BentoML model store; the model store "
        "holds no nnship models (`nnship export RUN` stores one)"
    )
