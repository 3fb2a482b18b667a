"""A corrupt package manifest is refused in one line naming the package and the problem."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

import nnship.service.cli
from nnship.cli import main
from nnship.errors import NnshipError
from nnship.export.package import ExportOptions, export_run
from nnship.package import graph_mismatch, load_package
from tests.manifests import manifest
from tests.server import free_port


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
        f"missing {k}": (_drop(k), f"{k}: missing")
        for k in ("model", "version", "task", "input", "output", "variants", "default_variant")
    },
    **{
        f"missing input.{k}": (_drop("input", k), f"input.{k}: missing")
        for k in ("shape", "feature_names", "stats")
    },
    "missing output.labels": (_drop("output", "labels"), "output.labels: missing"),
    "missing stats min": (_drop("input", "stats", 0, "min"), "input.stats[0].min: missing"),
    **{
        f"missing variant {k}": (_drop("variants", "fp32", k), f"variants.fp32.{k}: missing")
        for k in ("file", "sha256", "shipped")
    },
    "model not str": (_set("model", value=7), "model: Input should be a valid string"),
    "variants a list": (_set("variants", value=["fp32"]), "variants: Input should be a valid dict"),
    "input a list": (_set("input", value=[4]), "input: Input should be a valid dict"),
    "shape a str": (_set("input", "shape", value="4"), "input.shape: Input should be a valid list"),
    "shape negative": (
        _set("input", "shape", value=[-4]),
        "input.shape[0]: Input should be greater",
    ),
    "stats short": (_set("input", "stats", value=[]), "input.stats: 0 entries for 4 features"),
    "min a str": (_set("input", "stats", 0, "min", value="0"), "input.stats[0].min: Input should"),
    "min a bool": (
        _set("input", "stats", 0, "min", value=False),
        "input.stats[0].min: Input should",
    ),
    "labels a str": (
        _set("output", "labels", value="abc"),
        "output.labels: Input should be a valid list",
    ),
    "shipped a str": (
        _set("variants", "fp32", "shipped", value="yes"),
        "variants.fp32.shipped: Input should be a valid boolean",
    ),
    "sha256 short": (
        _set("variants", "fp32", "sha256", value="abc"),
        "variants.fp32.sha256: String should match",
    ),
    "unknown task": (
        _set("task", value="ranking"),
        "task: Input should be 'classification' or 'regression'",
    ),
    "default unknown": (
        _set("default_variant", value="nope"),
        "default_variant: 'nope' is not a shipped variant",
    ),
    "variant not a dict": (
        _set("variants", "fp32", value="fp32.onnx"),
        "variants.fp32: Input should be a valid dict",
    ),
    **{
        f"file {name!r}": (
            _set("variants", "fp32", "file", value=name),
            f"variants.fp32.file: {name!r} is not a plain file name",
        )
        for name in ("..", ".", "", "a/b", "/etc/passwd", "../fp32.onnx", "a\\b")
    },
    "newline in a key": (
        _set("variants", "x\ny", value={"file": "x", "shipped": 1}),
        "variants.x\\ny.shipped: Input should be a valid boolean",
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

    monkeypatch.setattr(nnship.service.cli.subprocess, "Popen", no_server)
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
    assert "variants.fp32.file: '..' is not a plain file name" in proc.stderr


def test_the_exported_manifest_passes(package):
    assert load_package(package).manifest.variants["fp32"].shipped


# -- the manifest against the ONNX graph, start-up failures, the store, v2 errors ---------------

NNSHIP_SERVE = [sys.executable, "-m", "nnship.cli", "serve"]
BENTOML_SERVE = [sys.executable, "-m", "bentoml", "serve", "nnship.service.service:NnshipService"]
MISMATCHES = {
    "shape [5]": (_set("input", "shape", value=[5]), "input.shape [5]"),
    "shape [10**12]": (_set("input", "shape", value=[10**12]), f"input.shape [{10**12}]"),
    "labels 2 of 3": (_set("output", "labels", value=["a", "b"]), "2 output.labels need"),
}


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without NNSHIP_* settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNSHIP_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the server sets its own
    return {**env, "BENTOML_DO_NOT_TRACK": "true", **extra}


def _serve_once(command: str, model: str, **env: str) -> tuple[int, float, str]:
    """Run `nnship serve MODEL` or `bentoml serve` to its end: (exit code, seconds, output)."""
    port = str(free_port())
    if command == "nnship":
        cmd, env = [*NNSHIP_SERVE, model, "--port", port], _env(**env)
    else:
        cmd, env = [*BENTOML_SERVE, "--port", port], _env(NNSHIP_MODEL=model, **env)
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:  # a restart loop never ends by itself: whatever is left of the group goes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, time.monotonic() - started, out.decode(errors="replace")


def _assert_refused_once(rc: int, took: float, output: str, message: str) -> None:
    """Exit 2 within seconds, exactly one `nnship: error:` line holding `message`, no traceback."""
    errors = [line for line in output.splitlines() if "nnship: error:" in line]
    assert rc == 2 and took < 40, (rc, took, output[-3000:])
    assert len(errors) == 1 and message in errors[0], output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def _edited_copy(package: Path, where: Path, edit) -> Path:
    copy = shutil.copytree(package, where)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("command", ["nnship", "bentoml"])
@pytest.mark.parametrize("case", list(MISMATCHES))
def test_manifest_not_matching_the_graph_is_refused_once(package, tmp_path, case, command):
    """Shape or labels that do not fit the ONNX graph: one line, exit 2, no worker restart loop
    (before: a traceback every few seconds for the shape, a served model answering 500 for labels)."""
    edit, message = MISMATCHES[case]
    bad = _edited_copy(package, tmp_path / "bad-pkg", edit)
    rc, took, output = _serve_once(command, str(bad))
    _assert_refused_once(rc, took, output, "the manifest does not match the ONNX model")
    assert message in output and "bad-pkg" in output


def _dynamic_features_model(path: Path) -> None:
    """An ONNX graph whose feature axis is dynamic: (batch, f) -> 3 copies of each row's mean."""
    import onnx
    from onnx import TensorProto, helper

    mean = helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=1)
    out = helper.make_node("Concat", ["m", "m", "m"], ["output"], axis=1)
    graph = helper.make_graph(
        [mean, out],
        "dynamic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "f"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_any_start_up_exception_is_fatal_in_one_line(package, tmp_path):
    """A failure the checks cannot foresee (here warm-up cannot allocate 10**12 features for a
    graph that takes any width) stops `bentoml serve` with exit 2 in one line, not a restart loop."""
    bad = _edited_copy(package, tmp_path / "bad-pkg", _set("input", "shape", value=[10**12]))
    _dynamic_features_model(bad / "fp32.onnx")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["variants"]["fp32"]["sha256"] = hashlib.sha256(
        (bad / "fp32.onnx").read_bytes()
    ).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(manifest))
    rc, took, output = _serve_once("bentoml", str(bad))
    _assert_refused_once(rc, took, output, "nnship: error: start-up failed: ")


@pytest.fixture
def store_copy(iris_package, tmp_path) -> tuple[Path, str]:
    """A BentoML home of its own holding a copy of the iris model: (home, its model folder)."""
    model = f"iris-served:{iris_package['version']}"
    home = tmp_path / "bentoml"
    folder = home / "models" / "iris-served" / iris_package["version"]
    shutil.copytree(load_package(model).path, folder)
    (folder.parent / "latest").write_text(iris_package["version"])
    return home, model


@pytest.mark.parametrize("command", ["nnship", "bentoml"])
@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_unreadable_store_entry_is_refused_once(store_copy, damage, command):
    """A corrupt or missing model.yaml: one line naming the model, exit 2 (before: a YAML-parser
    or BentoMLException traceback, rc 1)."""
    home, model = store_copy
    yaml = home / "models" / "iris-served" / model.split(":")[1] / "model.yaml"
    if damage == "corrupt":
        yaml.write_text("name: [unclosed\n")
    else:
        yaml.unlink()
    rc, took, output = _serve_once(command, model, BENTOML_HOME=str(home))
    _assert_refused_once(rc, took, output, f"model {model}: the BentoML model store cannot read")


def test_graph_mismatch_allows_the_exports_dynamic_axes():
    """Dynamic graph axes fit any manifest value; fixed ones must match."""
    seq = manifest("gru", [30, 4])
    seq.output.labels = ["a", "b", "c"]
    outputs = {"output": ["batch", 3]}
    assert graph_mismatch(seq, {"input": ["batch", "sequence", 4]}, outputs) is None
    assert "input.shape [30, 4]" in graph_mismatch(
        seq, {"input": ["batch", "sequence", 5]}, outputs
    )
    assert "input.shape" in graph_mismatch(seq, {"input": ["batch", 4]}, outputs)
    reg = manifest("mlp", [4], "regression")
    assert graph_mismatch(reg, {"input": ["batch", 4]}, {"output": [None, 1]}) is None
    assert "a regression" in graph_mismatch(reg, {"input": ["batch", 4]}, {"output": ["b", 3]})
    assert "not input/output" in graph_mismatch(reg, {"x": ["batch", 4]}, {"output": ["b", 1]})


class _Served:
    """Just enough of NnshipService for the v2 routes' checks."""

    model, version, ready = "iris-served", "1", True

    @staticmethod
    def reject(e, request_id=""):
        return JSONResponse({**e.body(), "request_id": request_id}, status_code=e.status)

    @property
    def runtime(self):
        raise RuntimeError("a bug in a v2 route")


@pytest.fixture
def v2_client(monkeypatch):
    """The v2 app behind the Guard, as the service mounts it, serving a stand-in service."""
    from nnship.service.oip import STATE, oip_app
    from nnship.service.security import Guard
    from nnship.service.settings import Settings

    monkeypatch.setattr(STATE, "service", _Served())
    with TestClient(Guard(oip_app, Settings(model="x")), raise_server_exceptions=False) as client:
        yield client


def test_v2_unexpected_exception_is_a_json_500(v2_client):
    """Before: Starlette's own plain-text "Internal Server Error" (the Guard saw a started answer)."""
    r = v2_client.get("/models/iris-served", headers={"x-request-id": "rid-500-check"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
    assert r.json() == {"error": "internal error", "request_id": "rid-500-check"}
    assert r.headers["x-request-id"] == "rid-500-check"


@pytest.mark.parametrize("path", ["/models/{}", "/models/iris-served/versions/{}/ready"])
def test_v2_echoes_a_short_prefix_of_unknown_names(v2_client, path):
    """A 60,000-character model name or version comes back as 64 characters and "…" (before:
    twice in full, a 120 KB error)."""
    name = "n" * 60_000
    r = v2_client.get(path.format(name))
    assert r.status_code == 404 and len(r.content) < 1000, len(r.content)
    assert f"'{'n' * 64}…'" in r.json()["error"]
