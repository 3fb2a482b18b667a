"""Model families and the registry that builds a network by name."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from nnship.models.cnn import CNN, CNNConfig
from nnship.models.common import ACTIVATIONS, config_from_dict
from nnship.models.mlp import MLP, MLPConfig
from nnship.models.preprocess import Preprocess, PreprocessConfig
from nnship.models.rnn import RecurrentNet, RNNConfig

REGISTRY: dict[str, tuple[type, type[nn.Module]]] = {
    "mlp": (MLPConfig, MLP),
    "cnn": (CNNConfig, CNN),
    "rnn": (RNNConfig, RecurrentNet),
    "lstm": (RNNConfig, RecurrentNet),
    "gru": (RNNConfig, RecurrentNet),
}
TASKS = ("classification", "regression")
RECURRENT = ("rnn", "lstm", "gru")


def default_standardize(name: str, input_shape: tuple[int, ...]) -> str:
    """Per channel for C×H×W images, per feature for recurrent sequences, else per element."""
    if len(input_shape) == 3:
        return "channel"
    return "feature" if name in RECURRENT else "element"


__all__ = ["ACTIVATIONS", "REGISTRY", "Network", "PreprocessConfig", "build_model", "make_config"]


def make_config(name: str, values: dict[str, Any] | None = None) -> Any:
    """The config dataclass for a family, from a dict; errors name the valid choices."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(REGISTRY)}")
    values = dict(values or {})
    cfg_cls, _ = REGISTRY[name]
    if cfg_cls is RNNConfig and values.setdefault("cell", name) != name:
        raise ValueError(f"model {name!r} cannot take cell={values['cell']!r}")
    return config_from_dict(cfg_cls, values)


class Network(nn.Module):
    """Raw inputs (B, *input_shape) -> folded preprocessing -> family body -> (B, outputs)."""

    def __init__(
        self,
        name: str,
        config: Any,
        input_shape: tuple[int, ...],
        num_outputs: int,
        task: str = "classification",
        preprocess: PreprocessConfig | None = None,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
        preprocess = preprocess or PreprocessConfig(default_standardize(name, input_shape))
        if name in RECURRENT and preprocess.standardize == "element":
            raise ValueError(
                f"{name} takes sequences of any length: standardize per 'feature' (or 'none')"
            )
        if preprocess.flattens and name != "mlp":
            raise ValueError(
                f"feature selection and PCA flatten the input; only mlp takes that, not {name}"
            )
        self.name, self.config, self.task = name, config, task
        self.input_shape = tuple(input_shape)
        self.preprocess = Preprocess(preprocess, self.input_shape)
        self.body = REGISTRY[name][1](config, self.preprocess.output_shape, num_outputs)
        # regression targets are learned standardized; the graph maps back to the target's units
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.preprocess(x))  # (B, outputs)
        if self.task == "regression":
            out = out * self.target_std + self.target_mean
        return out

    def describe(self) -> dict[str, Any]:
        """The JSON-able architecture record stored in checkpoint.json."""
        return {
            "name": self.name,
            "config": asdict(self.config),
            "input_shape": list(self.input_shape),
            "num_outputs": self.body_outputs,
            "task": self.task,
            "preprocess": asdict(self.preprocess.cfg),
        }

    @property
    def body_outputs(self) -> int:
        last = [m for m in self.body.modules() if isinstance(m, nn.Linear)][-1]
        return last.out_features


def build_model(
    name: str,
    config: dict[str, Any] | None,
    input_shape: tuple[int, ...] | list[int],
    num_outputs: int,
    task: str = "classification",
    preprocess: dict[str, Any] | None = None,
) -> Network:
    """Build a Network from plain values (as stored in checkpoint.json); ValueError on anything invalid."""
    cfg = make_config(name, config)
    preprocess = {
        "standardize": default_standardize(name, tuple(input_shape)),
        **(preprocess or {}),
    }
    pre = config_from_dict(PreprocessConfig, preprocess)
    if not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive integer, got {num_outputs!r}")
    return Network(name, cfg, tuple(input_shape), num_outputs, task, pre)
