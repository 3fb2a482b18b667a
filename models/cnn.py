"""Convolutional network for C×H×W inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnship.models.common import check_dropout, check_positive_ints, make_activation


@dataclass
class CNNConfig:
    channels: tuple[int, ...] = (32, 64)  # output channels of each conv block
    kernel_size: int = 3  # odd, "same" padding
    pool_every: int = 1  # max-pool 2x2 after every n-th block (while H, W >= 2)
    hidden: int = 128  # width of the dense layer before the output
    activation: str = "relu"  # relu | sigmoid | tanh | gelu
    dropout: float = 0.2  # before the dense layers
    batch_norm: bool = True  # BatchNorm2d after each conv

    def __post_init__(self) -> None:
        check_positive_ints("channels", tuple(self.channels))
        check_positive_ints("hidden", (self.hidden,))
        check_positive_ints("pool_every", (self.pool_every,))
        if (
            not isinstance(self.kernel_size, int)
            or self.kernel_size < 1
            or self.kernel_size % 2 == 0
        ):
            raise ValueError(
                f"kernel_size must be a positive odd integer, got {self.kernel_size!r}"
            )
        check_dropout(self.dropout)
        make_activation(self.activation)


class CNN(nn.Module):
    """(B, C, H, W) -> conv blocks -> global average pool -> dense -> (B, out)."""

    def __init__(self, cfg: CNNConfig, input_shape: tuple[int, ...], num_outputs: int):
        super().__init__()
        if len(input_shape) == 2:  # (H, W) grey images get a channel axis
            input_shape = (1, *input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs inputs shaped (C, H, W) or (H, W), got {input_shape}")
        self.input_shape = tuple(input_shape)
        c, h, w = input_shape
        blocks: list[nn.Module] = []
        for i, out_c in enumerate(cfg.channels, start=1):
            blocks.append(nn.Conv2d(c, out_c, cfg.kernel_size, padding=cfg.kernel_size // 2))
            if cfg.batch_norm:
                blocks.append(nn.BatchNorm2d(out_c))
            blocks.append(make_activation(cfg.activation))
            if i % cfg.pool_every == 0 and h >= 4 and w >= 4:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out_c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(c * h * w, cfg.hidden),
            make_activation(cfg.activation),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)  # (B, C, H, W)
        return self.head(self.features(x))  # (B, out)
