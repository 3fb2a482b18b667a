"""A corrupt package manifest is refused in one line naming the package and the problem."""

import json
import shutil
import subprocess
import sys

import pytest

import service.cli
from export.package import ExportOptions, export_run
from export.store import load_package
from nnship.cli import main
from nnship.errors import NnshipError


@pytest.fixture(scope="module")
def package(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "iris-pkg"
    opts = ExportOptions(
        str(tiny_run), out=str(out), store=False, variants=("fp32",), bench_seconds=0.02
    )
    export_run(opts)
    return out


def _drop(*keys):
    def edit(m):
        for k in keys[:-1]:
            m = m[k]
        del m[keys[-1]]

    return edit


def _set(*keys, value):
    def edit(m):
        for k in keys[:-1]:
            m = m[k]
        m[keys[-1]] = value

    return edit


CASES = {
    **{
        f"missing {k}": (_drop(k), f"{k} is missing")
        for k in ("model", "version", "task", "input", "output", "variants", "default_variant")
    },
    **{
        f"missing input.{k}": (_drop("input", k), f"input.{k} is missing")
        for k in ("shape", "feature_names", "stats")
    },
    "missing output.labels": (_drop("output", "labels"), "output.labels is missing"),
    "missing stats min": (_drop("input", "stats", 0, "min"), "input.stats[0].min is missing"),
    **{
        f"missing variant {k}": (_drop("variants", "fp32", k), f"variants.fp32.{k} is missing")
        for k in ("file", "sha256", "shipped")
    },
    "model not str": (_set("model", value=7), "model must be str, not int"),
    "variants a list": (_set("variants", value=["fp32"]), "variants must be dict, not list"),
    "input a list": (_set("input", value=[4]), "input must be dict, not list"),
    "shape a str": (_set("input", "shape", value="4"), "input.shape must be list"),
    "shape negative": (_set("input", "shape", value=[-4]), "positive integers"),
    "stats short": (_set("input", "stats", value=[]), "input.stats has 0 entries for 4"),
    "min a str": (_set("input", "stats", 0, "min", value="0"), "input.stats[0].min must be"),
    "labels a str": (_set("output", "labels", value="abc"), "output.labels must be list"),
    "shipped a str": (_set("variants", "fp32", "shipped", value="yes"), "shipped must be bool"),
    "sha256 short": (_set("variants", "fp32", "sha256", value="abc"), "not a hex sha256"),
    "unknown task": (_set("task", value="ranking"), "task must be one of"),
    "default unknown": (_set("default_variant", value="nope"), "'nope' is not a shipped variant"),
    "variant not a dict": (_set("variants", "fp32", value="fp32.onnx"), "must be an object"),
    **{
        f"file {name!r}": (
            _set("variants", "fp32", "file", value=name),
            f"variants.fp32.file {name!r} is not a plain file name",
        )
        for name in ("..", ".", "", "a/b", "/etc/passwd", "../fp32.onnx", "a\\b")
    },
    "newline in a key": (
        _set("variants", "x\ny", value={"file": "x", "shipped": 1}),
        "variants.x\\ny.shipped must be bool",
    ),
}


@pytest.fixture
def corrupt(package, tmp_path, request):
    edit, _ = CASES[request.param]
    copy = shutil.copytree(package, tmp_path / "bad-pkg")
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("corrupt", list(CASES), indirect=True)
def test_load_package_refuses_in_one_line(corrupt, request):
    message = CASES[request.node.callspec.params["corrupt"]][1]
    with pytest.raises(NnshipError) as e:
        load_package(corrupt)
    text = str(e.value)
    assert "\n" not in text and "\r" not in text, text
    assert text.startswith(f"{corrupt / 'manifest.json'}: not a valid nnship model package: ")
    assert message in text, text


@pytest.mark.parametrize("corrupt", list(CASES), indirect=True)
def test_serve_refuses_before_starting(corrupt, capsys, monkeypatch):
    def no_server(*a, **kw):
        raise AssertionError("the server was started for a corrupt package")

    monkeypatch.setattr(service.cli.subprocess, "Popen", no_server)
    rc = main(["serve", str(corrupt)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert err.startswith("nnship: error: ") and "bad-pkg" in err and "not a valid" in err


@pytest.mark.parametrize("corrupt", ["file '..'"], indirect=True)
def test_serve_command_no_traceback(corrupt):
    proc = subprocess.run(
        [sys.executable, "-m", "nnship.cli", "serve", str(corrupt), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "variants.fp32.file '..' is not a plain file name" in proc.stderr


def test_the_exported_manifest_passes(package):
    assert load_package(package).manifest["variants"]["fp32"]["shipped"]
