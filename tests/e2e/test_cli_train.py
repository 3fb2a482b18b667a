"""The `nnship train` console script end to end, as a user runs it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path


def test_nnship_train_end_to_end(tmp_path):
    # the script installed in this interpreter's env
    beside = Path(sys.executable).parent / "nnship"
    exe = str(beside) if beside.exists() else shutil.which("nnship")
    assert exe, "the nnship console script is not installed"
    out = tmp_path / "runs" / "digits"
    proc = subprocess.run(
        [exe, "train", "--model", "mlp", "--dataset", "digits", "--epochs", "4", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "test_accuracy=" in proc.stdout
    files = {p.name for p in out.iterdir()}
    assert {
        "checkpoint.safetensors",
        "checkpoint.json",
        "metrics.json",
        "training_curves.png",
        "confusion_matrix.png",
        "training_state.json",
        "training_state.safetensors",
    } <= files
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85
    assert not (out.parent / "digits.snapshot").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
