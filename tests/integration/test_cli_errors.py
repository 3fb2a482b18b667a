"""Every bad input to `nnship train` ends in one line naming the problem, exit 2, and no run directory."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nnship.cli import main


def _run(capsys, *argv):
    rc = main(["train", *argv])
    err = capsys.readouterr().err.strip()
    return rc, err


CASES = [
    (["--dataset", "mnist"], "unknown dataset 'mnist': not a built-in (digits, digits-seq"),
    (
        ["--dataset", "{tmp}/none.csv", "--target", "y"],
        "dataset file {tmp}/none.csv does not exist",
    ),
    (["--dataset", "{tmp}/empty.csv", "--target", "y"], "empty.csv: the file is empty"),
    (
        ["--dataset", "{tmp}/ok.csv", "--target", "price"],
        "ok.csv: no target column 'price'; columns: a, b, y",
    ),
    (["--dataset", "{tmp}/ok.csv"], "ok.csv: a CSV or Parquet file needs --target COLUMN"),
    (
        ["--dataset", "{tmp}/text.csv", "--target", "y"],
        "text.csv: non-numeric feature column(s): b",
    ),
    (
        ["--dataset", "{tmp}/nan.csv", "--target", "y"],
        "nan.csv: NaN or infinite values in column(s): a",
    ),
    (["--dataset", "{tmp}/mismatch.npz"], "mismatch.npz: X has 30 rows but y has 29"),
    (["--dataset", "{tmp}/nox.npz"], "nox.npz: missing array(s) X; found: data, y"),
    (
        ["--model", "cnn", "--dataset", "iris"],
        "cannot build cnn for iris (4,): cnn needs inputs shaped",
    ),
    (
        ["--model", "mlp", "--dataset", "iris", "--model-config", '{"depth": 3}'],
        "unknown MLPConfig field(s) depth",
    ),
    (["--model", "mlp", "--dataset", "iris", "--augment"], "does not apply to tabular data"),
    (["--resume", "{tmp}/missing-run"], "run directory {tmp}/missing-run does not exist"),
]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "ok.csv").write_text("a,b,y\n" + "1,2,0\n3,4,1\n" * 20)
    (tmp_path / "text.csv").write_text("a,b,y\n" + "1,x,0\n3,y,1\n" * 20)
    (tmp_path / "nan.csv").write_text("a,b,y\n" + "1,2,0\n,4,1\n" * 20)
    np.savez(tmp_path / "mismatch.npz", X=np.zeros((30, 2)), y=np.zeros(29))
    np.savez(tmp_path / "nox.npz", data=np.zeros((30, 2)), y=np.zeros(30))
    return tmp_path


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_one_line_nonzero_no_run(capsys, files, argv, message):
    out = files / "runs" / "x"
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    rc, err = _run(capsys, *argv, "--epochs", "1", "--out", str(out))
    assert rc == 2
    assert err.count("\n") == 0, err
    assert err.startswith("nnship: error: ")
    assert message.replace("{tmp}", str(files)) in err
    assert not (files / "runs").exists() or not any((files / "runs").iterdir())


def test_argparse_rejects_unknown_choices(capsys):
    for argv in (["--model", "transformer"], ["--activation", "swish"], ["--optimizer", "lion"]):
        with pytest.raises(SystemExit) as e:
            main(["train", *argv])
        assert e.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_existing_output_needs_overwrite(capsys, tiny_run):
    rc, err = _run(capsys, "--model", "mlp", "--dataset", "iris", "--out", str(tiny_run))
    assert rc == 2 and "already exists; pass --overwrite" in err


@pytest.mark.parametrize("kind", ["folder", "symlink", "file", "cwd"])
def test_overwrite_never_replaces_what_is_not_a_run(capsys, tmp_path, monkeypatch, kind):
    """--overwrite replaces a finished run only: any other folder (or link, or file) stays intact."""
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    if kind == "symlink":
        link = tmp_path / "link"
        link.symlink_to(target)
        out = link
    elif kind == "file":
        out = target / "keep.txt"
    elif kind == "cwd":
        monkeypatch.chdir(target)
        out = target
    else:
        out = target
    argv = ["--model", "mlp", "--dataset", "iris", "--epochs", "1", "--out", str(out)]
    rc, err = _run(capsys, *argv, "--overwrite")
    assert rc == 2 and "never replaced" in err, err
    assert (target / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_a_finished_run(capsys, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "stale.txt").write_text("old")
    argv = ["--model", "mlp", "--dataset", "iris", "--epochs", "1", "--out", str(run)]
    beside = tmp_path / ".run.old"  # a user's folder that a fixed temp name would have hit
    beside.mkdir()
    (beside / "mine.txt").write_text("keep")
    rc, err = _run(capsys, *argv, "--overwrite")
    assert rc == 0, err
    assert (run / "checkpoint.json").is_file() and not (run / "stale.txt").exists()
    assert (beside / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("damage", ["tamper", "no-json", "no-weights", "other-arch"])
def test_resume_from_bad_checkpoint(capsys, tiny_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    if damage == "tamper":
        data = bytearray((run / "checkpoint.safetensors").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (run / "checkpoint.safetensors").write_bytes(bytes(data))
        expect = "checkpoint.safetensors: sha256 mismatch"
    elif damage == "no-json":
        (run / "checkpoint.json").unlink()
        expect = "checkpoint.json: missing"
    elif damage == "no-weights":
        (run / "checkpoint.safetensors").unlink()
        expect = "checkpoint.safetensors: missing"
    else:
        meta = json.loads((run / "checkpoint.json").read_text())
        meta["architecture"]["name"] = "gru"
        meta["architecture"]["config"] = {}
        meta["architecture"]["input_shape"] = [1, 4]
        meta["architecture"]["preprocess"]["standardize"] = "feature"
        (run / "checkpoint.json").write_text(json.dumps(meta))
        expect = "weights do not fit the gru architecture"
    out = tmp_path / "resumed"
    rc, err = _run(capsys, "--resume", str(run), "--out", str(out))
    assert rc == 2 and expect in err and "\n" not in err
    assert not out.exists()


def test_console_script_and_module_entry(tmp_path):
    """The real `python -m nnship.training` process: error on stderr, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "nnship.training", "--dataset", "nope.txt"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "unknown dataset 'nope.txt'" in proc.stderr
