"""Training levers on tiny runs: resume, regression, losses, schedules, preprocessing options."""

import json

import pytest
import torch
from safetensors.torch import load_file

from nnship.training.checkpoint import load_checkpoint
from nnship.training.train import TrainConfig, train


def test_resume_continues_exactly(tmp_path):
    common = dict(model="mlp", dataset="wine", schedule="none", patience=0, seed=5)
    train(TrainConfig(**common, epochs=6, out=str(tmp_path / "straight")))
    train(TrainConfig(**common, epochs=3, out=str(tmp_path / "first")))
    train(TrainConfig(epochs=6, out=str(tmp_path / "resumed")), resume=tmp_path / "first")
    a = load_file(str(tmp_path / "straight" / "training_state.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "training_state.safetensors"))
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    hist = json.loads((tmp_path / "resumed" / "training_state.json").read_text())["history"]
    assert hist["epoch"] == [1, 2, 3, 4, 5, 6]


def test_resume_with_a_schedule_extends_it(tmp_path):
    train(TrainConfig(model="mlp", dataset="iris", epochs=2, out=str(tmp_path / "a")))
    m = train(TrainConfig(epochs=4, out=str(tmp_path / "b")), resume=tmp_path / "a")
    assert m["epochs"] == 4
    state = json.loads((tmp_path / "b" / "training_state.json").read_text())
    assert state["scheduler"]["total_steps"] == 4 * 2  # 102 rows / 64 per batch = 2 steps an epoch


def test_regression_run(tmp_path):
    m = train(
        TrainConfig(
            model="mlp", dataset="diabetes", epochs=5, loss="huber", out=str(tmp_path / "r")
        )
    )
    assert {"test_r2", "test_mae", "test_rmse", "val_r2"} <= set(m)
    assert m["test_mae"] > 0
    assert (tmp_path / "r" / "predictions.png").is_file()
    model, meta = load_checkpoint(tmp_path / "r")
    assert meta.output.task == "regression" and meta.output.labels == []
    assert float(model.target_std) > 10  # outputs come back in the target's units


@pytest.mark.parametrize(
    "opts",
    [
        dict(optimizer="sgd", schedule="step", class_weights=True, label_smoothing=0.1),
        dict(optimizer="adam", schedule="none", select_k=8, pca=4, activation="sigmoid"),
        dict(
            optimizer="adamw",
            schedule="onecycle",
            grad_clip=0.0,
            activation="gelu",
            standardize="none",
        ),
    ],
)
def test_levers_train_and_learn(tmp_path, opts):
    m = train(
        TrainConfig(
            model="mlp", dataset="wine", epochs=25, patience=0, out=str(tmp_path / "w"), **opts
        )
    )
    assert m["test_accuracy"] > 0.8  # chance is 0.4


@pytest.mark.parametrize("model", ["cnn", "lstm", "gru", "rnn"])
def test_image_and_sequence_families_train(tmp_path, model):
    dataset = "digits" if model == "cnn" else "digits-seq"
    cfg = {"channels": [8]} if model == "cnn" else {"hidden_size": 16, "num_layers": 1}
    m = train(
        TrainConfig(
            model=model, dataset=dataset, epochs=3, model_config=cfg, out=str(tmp_path / model)
        )
    )
    assert m["test_accuracy"] > 0.3  # three tiny epochs, chance is 0.1
    meta = json.loads((tmp_path / model / "checkpoint.json").read_text())
    assert meta["training"]["augment"] is True  # shifts on by default for digits images and rows
    assert meta["training"]["standardize"] == ("channel" if model == "cnn" else "feature")


def test_resume_from_an_interrupted_runs_snapshot(tmp_path):
    """An interrupted run leaves RUN.snapshot (state after each epoch); --resume continues from it."""
    import shutil

    common = dict(model="mlp", dataset="wine", schedule="none", patience=0, seed=2)
    train(TrainConfig(**common, epochs=4, out=str(tmp_path / "straight")))
    train(TrainConfig(**common, epochs=2, out=str(tmp_path / "early")))
    # what the epoch-2 snapshot of an interrupted 4-epoch run holds
    snap = tmp_path / "cut.snapshot"
    snap.mkdir()
    for f in ("training_state.json", "training_state.safetensors"):
        shutil.copy(tmp_path / "early" / f, snap / f)
    train(TrainConfig(epochs=4, out=str(tmp_path / "cut")), resume=snap)
    a = load_file(str(tmp_path / "straight" / "training_state.safetensors"))
    b = load_file(str(tmp_path / "cut" / "training_state.safetensors"))
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
