"""Fully connected network (multi-layer perceptron)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nnship.models.common import check_dropout, check_positive_ints, make_activation


@dataclass
class MLPConfig:
    hidden: tuple[int, ...] = (256, 128)  # width of each hidden layer
    activation: str = "relu"  # relu | sigmoid | tanh | gelu
    dropout: float = 0.1  # after each hidden activation
    batch_norm: bool = True  # BatchNorm1d before each activation

    def __post_init__(self) -> None:
        check_positive_ints("hidden", tuple(self.hidden), allow_empty=True)
        check_dropout(self.dropout)
        make_activation(self.activation)


class MLP(nn.Module):
    """(B, *input_shape) -> flatten -> [Linear, BN, act, dropout] * n -> Linear -> (B, out)."""

    def __init__(self, cfg: MLPConfig, input_shape: tuple[int, ...], num_outputs: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in cfg.hidden:
            layers.append(nn.Linear(width, h))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(cfg.activation))
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, out)
