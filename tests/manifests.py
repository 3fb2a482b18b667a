"""Valid package manifests built in memory, for tests of what the service derives from one."""

from nnship.contracts import Manifest

SHA = "0" * 64


def manifest(
    family="mlp", shape=(4,), task="classification", low=0.0, high=10.0, feats=None
) -> Manifest:
    """A manifest of one shipped fp32 variant; stats span [low, high] for each of `feats` features
    (default: the last axis)."""
    feats = feats or shape[-1]
    stats = [
        {"name": f"f{i}", "min": low, "max": high, "mean": (low + high) / 2, "std": 1.0}
        | {"quantiles": {"q50": (low + high) / 2}}
        for i in range(feats)
    ]
    axes = ["batch", "sequence"] if family in ("rnn", "lstm", "gru") else ["batch"]
    return Manifest.model_validate(
        {
            "model": "m",
            "version": "v1",
            "task": task,
            "family": family,
            "exporter": {"dynamic_axes": axes},
            "input": {
                "shape": list(shape),
                "feature_names": [s["name"] for s in stats],
                "stats": stats,
            },
            "output": {"task": task, "labels": ["a", "b"] if task == "classification" else []},
            "variants": {"fp32": {"file": "fp32.onnx", "shipped": True, "sha256": SHA}},
            "default_variant": "fp32",
        }
    )
