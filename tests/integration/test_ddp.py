"""Two gloo processes under torchrun reach the same weights as one process over the same global batches."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.conftest import make_npz

COMMON = [
    "--model",
    "mlp",
    "--epochs",
    "4",
    "--batch-size",
    "32",
    "--val-fraction",
    "0.2",
    "--model-config",
    '{"hidden": [16, 8], "dropout": 0.0, "batch_norm": false}',
    "--seed",
    "3",
]


def _train(launcher, data, out, env):
    cmd = [*launcher, "--dataset", str(data), *COMMON, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_ddp_two_processes_equal_single_process(tmp_path):
    # 160 train -> 128 after validation: 4 global batches of 32
    data = make_npz(tmp_path / "d.npz", n=200)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = _train([sys.executable, "-m", "nnship.training"], data, tmp_path / "single", env)
    assert single.returncode == 0, single.stderr
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "nnship.training",
    ]
    ddp = _train(launcher, data, tmp_path / "ddp", env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "training_state.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "training_state.safetensors"))
    weights = [k for k in a if k.startswith("model.")]
    assert len(weights) >= 6
    for k in weights:
        torch.testing.assert_close(b[k], a[k], atol=2e-6, rtol=1e-5)
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["processes"] == 2 and m["epochs"] == 4
    hist = json.loads((tmp_path / "ddp" / "training_state.json").read_text())["history"]
    assert hist["train_loss"][-1] < hist["train_loss"][0]  # it trained, not just copied init
