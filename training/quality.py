"""Retrain the quality-bar models over several seeds and write the table to a report.

python -m nnship.training.quality [--seeds 0 1 2] [--report reports/training-quality.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from nnship.io import atomic_write
from nnship.training.train import TrainConfig, train

# (model, dataset, metric, bar, classical anchor on the same split)
BARS = [
    ("cnn", "digits", "test_accuracy", 0.992, "RBF SVC 0.989"),
    ("mlp", "digits", "test_accuracy", 0.980, "logistic regression 0.967"),
    ("lstm", "digits-seq", "test_accuracy", 0.980, "—"),
    ("gru", "digits-seq", "test_accuracy", 0.980, "—"),
    ("mlp", "breast-cancer", "test_accuracy", 0.974, "logistic regression 0.982, RBF SVC 0.965"),
    ("mlp", "wine", "test_accuracy", 0.97, "—"),
    ("mlp", "diabetes", "test_r2", 0.33, "RidgeCV 0.333"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", help="model/dataset, e.g. cnn/digits")
    p.add_argument("--report", default="reports/training-quality.md")
    args = p.parse_args(argv)
    rows, all_pass = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for model, dataset, metric, bar, anchor in BARS:
            if args.only and args.only != f"{model}/{dataset}":
                continue
            vals, secs = [], []
            for seed in args.seeds:
                out = Path(tmp) / f"{model}-{dataset}-{seed}"
                m = train(TrainConfig(model=model, dataset=dataset, seed=seed, out=str(out)))
                vals.append(m[metric])
                secs.append(m["train_seconds"])
                print(
                    f"{model}/{dataset} seed {seed}: {metric}={m[metric]:.4f} "
                    f"({m['epochs']} epochs, {m['train_seconds']:.1f} s)",
                    flush=True,
                )
            ok = statistics.mean(vals) >= bar
            all_pass &= ok
            rows.append(
                f"| {model} / {dataset} | {metric} | {statistics.mean(vals):.4f} | {min(vals):.4f} "
                f"| {bar} | {'pass' if ok else 'FAIL'} | {max(secs):.1f} | {anchor} |"
            )
    lines = [
        "# Training quality",
        "",
        f"Defaults of `nnship train`, test split (stratified 80/20, seed 0), seeds {args.seeds}.",
        "Reproduce: `python -m nnship.training.quality`.",
        "",
        "| model / data | metric | mean | min | bar (mean) | result | max train s | classical anchor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    if not args.only:
        atomic_write(report, lambda f: f.write_text("\n".join(lines)))
    print("\n".join(lines))
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
