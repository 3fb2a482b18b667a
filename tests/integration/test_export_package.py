"""nnship export end to end on a tiny run: variants, manifest, report, store, sha256 checks, bad input."""

import json
import os
import shutil

import bentoml
import numpy as np
import pytest

from nnship.cli import main
from nnship.contracts import as_json
from nnship.errors import NnshipError
from nnship.export.package import ExportOptions, export_run
from nnship.io import sha256_file
from nnship.onnxrt import cpu_session
from nnship.package import load_package
from nnship.training.data import load_dataset, split

FAST = dict(bench_seconds=0.02, max_batch=200, threads=1)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "iris-pkg"
    manifest = as_json(
        export_run(ExportOptions(str(tiny_run), name="iris-tiny", out=str(out), **FAST))
    )
    return out, manifest


def test_manifest_contract(exported):
    out, m = exported
    assert m["model"] == "iris-tiny" and m["version"]
    assert m["task"] == "classification" and m["output"]["labels"] == [
        "setosa",
        "versicolor",
        "virginica",
    ]
    assert m["input"]["shape"] == [4] and len(m["input"]["stats"]) == 4
    assert m["default_variant"] in m["variants"] and m["default_reason"].startswith(
        m["default_variant"]
    )
    fp32 = m["variants"]["fp32"]
    assert fp32["shipped"] and fp32["parity"]["passed"] and fp32["parity"]["max_abs"] < 1e-4
    for name, v in m["variants"].items():
        if v["shipped"]:
            path = out / v["file"]
            assert v["sha256"] == sha256_file(path) and v["size_bytes"] == path.stat().st_size
            assert {"p50_ms", "p99_ms", "throughput_rps"} <= set(v["speed"])
            assert abs(v["metric_delta"]) <= 0.003 or name == "fp32"
        else:
            assert v["reason"] and not (out / v["file"]).exists()
    assert (out / "report.md").read_text().count("|") > 20
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_shipped_variants_run_at_batch_1_and_1000(exported, tiny_run):
    out, m = exported
    x = split(load_dataset("iris")).x_test
    for name, v in m["variants"].items():
        if v["shipped"]:
            s = cpu_session(out / v["file"])
            for n in (1, 1000):
                assert s.run(None, {"input": np.resize(x, (n, 4))})[0].shape == (n, 3), name


def test_store_round_trip_and_latest(exported, tiny_run, tmp_path):
    _, m = exported
    stored = bentoml.models.get(f"iris-tiny:{m['version']}")
    assert (
        stored.info.labels["family"] == "mlp"
        and stored.info.labels["default_variant"] == m["default_variant"]
    )
    assert stored.info.metadata["metric"] == "test_accuracy"
    pkg = load_package("iris-tiny:latest")
    assert pkg.manifest.version == m["version"]
    m2 = export_run(
        ExportOptions(str(tiny_run), name="iris-tiny", out=str(tmp_path / "again"), **FAST)
    )
    assert m2.version != m["version"]
    assert load_package("iris-tiny:latest").manifest.version == m2.version
    assert len(bentoml.models.list("iris-tiny")) >= 2


def test_flipped_byte_refused_naming_the_file(exported, tmp_path):
    out, m = exported
    copy = tmp_path / "pkg"
    shutil.copytree(out, copy)
    victim = copy / m["variants"]["fp32"]["file"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    with pytest.raises(NnshipError, match=r"fp32\.onnx: sha256 mismatch"):
        load_package(copy)
    victim.write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(NnshipError, match="modified or truncated"):
        load_package(copy)


def test_unknown_tag_and_missing_manifest(tmp_path):
    with pytest.raises(NnshipError, match="not in the BentoML model store"):
        load_package("no-such-model:latest")
    with pytest.raises(NnshipError, match=r"manifest\.json: missing"):
        load_package(tmp_path)


def _export_cli(capsys, *argv):
    rc = main(["export", *argv, "--threads", "1", "--max-batch", "50"])
    return rc, capsys.readouterr().err.strip()


def test_bad_inputs(capsys, tiny_run, tmp_path):
    store = os.environ["BENTOML_HOME"]
    before = {m.tag.name for m in bentoml.models.list()}
    cases = []
    cases.append(([str(tmp_path / "missing")], "does not exist"))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_run, incomplete)
    (incomplete / "checkpoint.safetensors").unlink()
    cases.append(([str(incomplete)], "checkpoint.safetensors: missing"))
    unknown = tmp_path / "unknown"
    shutil.copytree(tiny_run, unknown)
    meta = json.loads((unknown / "checkpoint.json").read_text())
    meta["architecture"]["name"] = "transformer"
    (unknown / "checkpoint.json").write_text(json.dumps(meta))
    cases.append(([str(unknown)], "invalid architecture: unknown model 'transformer'"))
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_run, tampered)
    w = tampered / "checkpoint.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")
    cases.append(([str(tampered)], "sha256 mismatch"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases.append(([str(tiny_run), "--out", str(blocker / "pkg")], "output directory"))
    cases.append(
        ([str(tiny_run), "--variants", "fp32,int4"], "unknown variant(s) int4; valid: fp32")
    )
    cases.append(([str(tiny_run), "--name", "Bad Name!"], "model name 'Bad Name!' is not valid"))
    for argv, message in cases:
        rc, err = (
            _export_cli(capsys, *argv, "--out", str(tmp_path / "out"))
            if "--out" not in argv
            else _export_cli(capsys, *argv)
        )
        assert rc == 2, (argv, err)
        assert message in err and "\n" not in err, (argv, err)
        assert not (tmp_path / "out").exists()
    assert {m.tag.name for m in bentoml.models.list()} == before
    assert os.environ["BENTOML_HOME"] == store


def test_unwritable_store_leaves_nothing(tiny_run, tmp_path):
    """BENTOML_HOME under a regular file: refused before any work, no package left behind."""
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = {**os.environ, "BENTOML_HOME": str(blocker / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "nnship.export", str(tiny_run), "--out", str(tmp_path / "pkg")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "BentoML model store" in proc.stderr and "not writable" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_objective_and_the_figures_behind_the_choice_go_into_the_manifest(
    capsys, tiny_run, tmp_path, objective
):
    out = tmp_path / "pkg"
    argv = [str(tiny_run), "--out", str(out), "--no-store", "--objective", objective]
    rc = main(["export", *argv, "--threads", "1", "--max-batch", "50"])
    printed = capsys.readouterr().out
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    choice = m["choice"]
    assert choice["objective"] == objective and choice["chosen"] == m["default_variant"]
    assert choice["batch"] == m["measured_on"]["bench_batch"] == 128
    assert f"(objective {objective})" in m["default_reason"]
    measured = {n: c for n, c in choice["candidates"].items() if "p50_ms" in c}
    assert "fp32" in measured and set(choice["candidates"]) == set(m["variants"])
    for name, c in measured.items():
        v = m["variants"][name]
        assert c["p50_ms"] == v["speed"]["p50_ms"] and c["metric"] == v["test_metric"]
        assert c["batched_rps"] == v["speed"]["throughput_rps"]
        if v["batch_coupled_ops"]:  # int8-dynamic quantizes activations per call
            assert c["served_as"] == "per-request" and c["served_rps"] == 1000 / c["p50_ms"]
        else:
            assert c["served_as"] == "batched" and c["served_rps"] == c["batched_rps"]
        assert (c.get("lost") is None) == (name == m["default_variant"])
    assert m["variants"]["int8-dynamic"]["batch_coupled_ops"] == ["DynamicQuantizeLinear"]
    assert m["variants"]["fp32"]["batch_coupled_ops"] == []
    figure = "p50_ms" if objective == "latency" else "served_rps"
    best = (min if objective == "latency" else max)(
        c[figure]
        for n, c in measured.items()
        if m["variants"][n]["shipped"] and "CPUExecutionProvider" in m["variants"][n]["providers"]
    )
    assert measured[m["default_variant"]][figure] == best
    diff = m["variants"]["fp32"]["output_diff"]
    assert diff["on"] == "probabilities" and diff["max_abs"] < 1e-5 and diff["rows"] == 30
    assert (
        "max |Δ probability| vs PyTorch" in printed
        and "max |Δ probability| vs PyTorch" in (out / "report.md").read_text()
    )
    assert load_package(out).choose_variant("auto", gpu=False) == m["default_variant"]


def test_unknown_objective_refused(capsys, tiny_run, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["export", str(tiny_run), "--out", str(tmp_path / "o"), "--objective", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --objective: invalid choice: 'x'" in err
    with pytest.raises(NnshipError, match="--objective 'fast': valid are latency"):
        export_run(ExportOptions(str(tiny_run), out=str(tmp_path / "o"), objective="fast"))
    assert not (tmp_path / "o").exists()
