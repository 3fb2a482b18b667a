"""Training plots and the export report figure: titles, kept-epoch marker, R²/MAE, panels."""

import re

import numpy as np
from matplotlib.colors import to_hex

from nnship.contracts import Manifest, as_json
from nnship.export.choose import choose_default
from nnship.export.report import (
    diff_header,
    report_figure,
    report_text,
    summary_lines,
    write_report,
)
from nnship.training.plots import headline, plot_confusion, plot_curves, plot_regression
from nnship.training.trainer import History
from tests.manifests import manifest

CPU = "CPUExecutionProvider"


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_headline_names_model_data_and_metric():
    assert (
        headline("mlp", "wine", {"test_accuracy": 0.97222}) == "mlp on wine: test accuracy 0.9722"
    )
    assert (
        headline("mlp", "diabetes", {"test_r2": 0.4512, "test_mae": 42.31})
        == "mlp on diabetes: test R² 0.4512, MAE 42.31"
    )


def test_curves_mark_the_kept_epoch(tmp_path):
    h = History(
        epoch=[1, 2, 3, 4, 5],
        train_loss=[1.0, 0.6, 0.4, 0.3, 0.2],
        val_loss=[1.1, 0.7, 0.5, 0.55, 0.6],
        val_metric=[0.5, 0.7, 0.9, 0.88, 0.87],
        lr=[1e-3] * 5,
    )
    title = "mlp on wine: test accuracy 0.9722"
    fig = plot_curves(tmp_path / "curves.png", h, "classification", title, kept_epoch=3)
    assert fig._suptitle.get_text() == title
    for ax in fig.axes:
        kept = [line for line in ax.get_lines() if line.get_label().startswith("kept")]
        assert len(kept) == 1 and list(kept[0].get_xdata()) == [3, 3]
        assert kept[0].get_label() == "kept: epoch 3 (lowest validation loss)"
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "kept: epoch 3 (lowest validation loss)" in legend
    assert [ax.get_title() for ax in fig.axes] == ["loss", "validation accuracy"]
    _png(tmp_path / "curves.png")


def test_regression_plot_shows_r2_and_mae(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.normal(100, 30, 80)
    pred = y + rng.normal(0, 10, 80)
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    mae = np.abs(y - pred).mean()
    fig = plot_regression(tmp_path / "pred.png", y, pred, "mlp on diabetes: test R² 0.5, MAE 9")
    ax = fig.axes[0]
    assert ax.get_title().startswith("mlp on diabetes: test R² 0.5, MAE 9")
    box = "\n".join(t.get_text() for t in ax.texts)
    assert f"R² = {r2:.4f}" in box and f"MAE = {mae:.4g}" in box
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("true", "predicted")
    _png(tmp_path / "pred.png")


def test_confusion_title(tmp_path):
    y = np.array([0, 1, 2, 1, 0])
    fig = plot_confusion(tmp_path / "cm.png", y, y, ["a", "b", "c"], "cnn on digits: test acc 1")
    assert fig.axes[0].get_title().startswith("cnn on digits: test acc 1")
    _png(tmp_path / "cm.png")


def _package_manifest(task="classification", coupled=True) -> Manifest:
    """A measured package: fp32, a batch-coupled int8-dynamic and an int8-static over budget."""
    record = as_json(manifest(task=task))
    speed = {"p99_ms": 0.05, "batch": 128}

    def variant(metric, p50, rps, **extra):
        return {
            "file": "x.onnx",
            "shipped": True,
            "sha256": "0" * 64,
            "test_metric": metric,
            "metric_delta": metric - 1.0,
            "speed": {**speed, "p50_ms": p50, "throughput_rps": rps},
            "output_diff": {"on": "probabilities", "max_abs": 2e-3, "rows": 36},
            "providers": [CPU],
            **extra,
        }

    variants = {
        "fp32": variant(1.0, 0.020, 100_000),
        "int8-dynamic": variant(
            1.0, 0.023, 190_000, batch_coupled_ops=["DynamicQuantizeLinear"] if coupled else []
        ),
        "int8-static": variant(0.9, 0.010, 400_000),
    }
    choice = choose_default(variants, 0.003, CPU, "balanced", batch=128)
    reason = choice.pop("reason")
    variants["int8-static"].update(shipped=False, reason="over the budget")
    record.update(
        model="wine-mlp",
        dataset="wine",
        metric="test_accuracy",
        variants=variants,
        default_variant=choice["chosen"],
        default_reason=reason,
        choice=choice,
        measured_on={"provider": CPU, "threads": 1, "bench_batch": 128},
        pytorch={"test_metric": 1.0, "speed": {**speed, "p50_ms": 0.1, "throughput_rps": 50_000}},
    )
    return Manifest.model_validate(record)


def test_report_figure_panels_mark_the_default_and_per_request_serving(tmp_path):
    m = _package_manifest(coupled=False)
    assert m.default_variant == "int8-dynamic"
    fig = report_figure(m)
    assert fig._suptitle.get_text() == (
        "wine-mlp (mlp on wine): test_accuracy 1.0000 with int8-dynamic"
    )
    lat, thr, met = fig.axes
    assert lat.get_title() == "batch-1 latency p50 (lower is better)"
    assert thr.get_title() == "throughput as served, batch 128 (higher is better)"
    assert met.get_title() == "test_accuracy on the test split"
    names = [t.get_text() for t in thr.get_xticklabels()]
    assert names == ["pytorch", "fp32", "int8-dynamic", "int8-static"]
    heights = [p.get_height() for p in thr.patches]
    assert heights == [50_000, 100_000, 190_000, 400_000]
    assert [t.get_text() for t in thr.texts] == ["50,000", "100,000", "190,000", "400,000"]
    assert [p.get_height() for p in lat.patches] == [0.1, 0.020, 0.023, 0.010]
    colors = [to_hex(p.get_facecolor()) for p in met.patches]
    assert colors[2] == to_hex("tab:green") and colors.count(to_hex("tab:green")) == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "default (balanced)" in legend and "served per request" in legend


def test_batch_coupled_variant_drawn_at_its_per_request_rate():
    m = _package_manifest(coupled=True)
    assert m.default_variant == "fp32"
    thr = report_figure(m).axes[1]
    dyn = thr.patches[2]
    assert dyn.get_height() == 1000 / 0.023 and dyn.get_hatch() == "//"
    assert thr.patches[1].get_hatch() in (None, "")


def test_report_table_states_what_parity_measures(tmp_path):
    m = _package_manifest(coupled=True)
    assert diff_header(m) == "max |Δ probability| vs PyTorch"
    text = report_text(m)
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert r"| max \|Δ probability\| vs PyTorch |" in header and "rows/s served" in header
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert {len(re.split(r"(?<!\\)\|", line)) for line in rows} == {13}  # 11 cells in every row
    dyn = next(line for line in text.splitlines() if line.startswith("| int8-dynamic"))
    assert "2.00e-03" in dyn and "43,478 (per-request)" in dyn and "fewer rows/s as served" in dyn
    assert "| fp32 |" in text and "**default**" in text.split("| fp32 |")[1].splitlines()[0]
    printed = "\n".join(summary_lines(m))
    assert "max |Δ probability| vs PyTorch" in printed and "per-request" in printed
    regression = manifest(task="regression")
    assert diff_header(regression) == "max |Δ raw output| vs PyTorch"
    write_report(tmp_path, m)
    _png(tmp_path / "report.png")
    assert (tmp_path / "report.md").read_text() == text
