"""A run trained on a user's file records the file's name as its data set, even where the file is
named like a built-in set, and gets none of that built-in set's recipe."""

import json

import numpy as np
import pandas as pd

from nnship.training.data import BUILTIN
from nnship.training.recipes import RECIPES
from nnship.training.train import TrainConfig, train


def test_a_file_named_like_a_built_in_set_is_recorded_by_its_file_name(tmp_path):
    from nnship.export.package import ExportOptions, export_run

    assert "diabetes" in BUILTIN and RECIPES[("mlp", "diabetes")]["weight_decay"] == 1e-2
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    df["y"] = df["a"] * 2 + rng.normal(scale=0.1, size=60)
    df.to_csv(tmp_path / "diabetes.csv", index=False)
    out = tmp_path / "run"
    train(
        TrainConfig(
            model="mlp", dataset=str(tmp_path / "diabetes.csv"), target="y", epochs=1, out=str(out)
        )
    )
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["dataset"]["name"] == "diabetes.csv"
    assert meta["dataset"]["source"] == str(tmp_path / "diabetes.csv")
    assert meta["training"]["weight_decay"] == 1e-4  # mlp's own default, not the built-in's 1e-2
    manifest = export_run(
        ExportOptions(str(out), variants=("fp32",), store=False, bench_seconds=0.02, threads=1)
    )
    assert manifest.dataset == "diabetes.csv"
    assert "mlp on diabetes.csv;" in (out / "package" / "report.md").read_text()
