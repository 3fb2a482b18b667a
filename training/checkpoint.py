"""Checkpoints in safetensors + JSON (never pickle): save, verify by sha256, load."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nnship.contracts import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    Checkpoint,
    parse,
    read_checkpoint,
    write_record,
)
from nnship.errors import NnshipError
from nnship.io import atomic_write, atomic_write_json, sha256_file, verify_file
from nnship.models import Network, build_model

log = logging.getLogger(__name__)

FORMAT = CHECKPOINT_FORMAT
WEIGHTS = "checkpoint.safetensors"
META = CHECKPOINT
STATE = "training_state.safetensors"
STATE_META = "training_state.json"


def library_versions() -> dict[str, str]:
    import numpy
    import sklearn

    import nnship

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "nnship": nnship.__version__,
    }


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write tensors atomically as safetensors; returns the file's sha256."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(clean, str(p)))
    return sha256_file(path)


def save_checkpoint(run_dir: Path, model: Network, meta: dict[str, Any]) -> Checkpoint:
    """checkpoint.safetensors (state dict) and checkpoint.json (meta + architecture + sha256),
    the record checked against its contract before it is written."""
    digest = save_tensors(run_dir / WEIGHTS, model.state_dict())
    record = {
        "format": FORMAT,
        "architecture": model.describe(),
        **meta,
        "weights": {"file": WEIGHTS, "sha256": digest},
    }
    checkpoint = parse(Checkpoint, record, run_dir / META, "nnship run")
    write_record(run_dir / META, checkpoint)
    return checkpoint


def read_meta(run_dir: str | Path) -> Checkpoint:
    """checkpoint.json of a run directory, with a clear error for each way it can be wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NnshipError(f"run directory {run_dir} does not exist")
    return read_checkpoint(run_dir / META)


def load_weights_into(model: torch.nn.Module, path: Path, sha256: str, what: str) -> None:
    verify_file(path, sha256)
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise NnshipError(f"{path}: weights do not fit the {what} architecture ({first})") from e


def load_checkpoint(run_dir: str | Path) -> tuple[Network, Checkpoint]:
    """Rebuild the network from checkpoint.json and load its verified weights; model in eval mode."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    arch = meta.architecture
    try:
        model = build_model(
            arch.name, arch.config, arch.input_shape, arch.num_outputs, arch.task, arch.preprocess
        )
    except (ValueError, KeyError, TypeError) as e:
        raise NnshipError(f"{run_dir / META}: invalid architecture: {e}") from e
    load_weights_into(model, run_dir / meta.weights.file, meta.weights.sha256, arch.name)
    return model.eval(), meta


def save_training_state(
    run_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]
) -> None:
    digest = save_tensors(run_dir / STATE, tensors)
    atomic_write_json(run_dir / STATE_META, {**state, "sha256": digest})


def load_training_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = run_dir / STATE_META
    if not path.is_file():
        raise NnshipError(f"{path}: missing; this run cannot be resumed")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise NnshipError(f"{path}: not valid JSON ({e})") from e
    verify_file(run_dir / STATE, state.get("sha256", ""))
    return load_file(str(run_dir / STATE)), state


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, extra in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    return {"state": state, "param_groups": rest["param_groups"]}
