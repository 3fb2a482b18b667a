"""Recurrent network over (T, F) sequences: plain RNN, LSTM or GRU, stacked, optionally bidirectional."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnship.models.common import check_dropout, check_positive_ints, make_activation

CELLS = ("rnn", "lstm", "gru")


@dataclass
class RNNConfig:
    cell: str = "lstm"  # rnn | lstm | gru
    hidden_size: int = 128  # per direction
    num_layers: int = 2  # stacked recurrent layers
    bidirectional: bool = True
    nonlinearity: str = "tanh"  # plain rnn cell only: tanh | relu
    head_hidden: int = 64  # dense layer on the last time step; 0 for none
    activation: str = "tanh"  # head activation: relu | sigmoid | tanh | gelu
    dropout: float = 0.1  # between stacked layers and in the head

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; valid: {', '.join(CELLS)}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be tanh or relu, got {self.nonlinearity!r}")
        check_positive_ints("hidden_size", (self.hidden_size,))
        check_positive_ints("num_layers", (self.num_layers,))
        if not isinstance(self.head_hidden, int) or self.head_hidden < 0:
            raise ValueError(
                f"head_hidden must be a non-negative integer, got {self.head_hidden!r}"
            )
        check_dropout(self.dropout)
        make_activation(self.activation)


class RecurrentNet(nn.Module):
    """(B, T, F) -> recurrent stack -> features at the last step (both directions) -> head -> (B, out)."""

    def __init__(self, cfg: RNNConfig, input_shape: tuple[int, ...], num_outputs: int):
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"{cfg.cell} needs inputs shaped (T, F), got {input_shape}")
        kwargs = dict(
            input_size=input_shape[1],
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        if cfg.cell == "rnn":
            kwargs["nonlinearity"] = cfg.nonlinearity
        self.rnn = getattr(nn, {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[cfg.cell])(**kwargs)
        self.hidden_size = cfg.hidden_size
        self.bidirectional = cfg.bidirectional
        width = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        if cfg.head_hidden:
            self.head = nn.Sequential(
                nn.Dropout(cfg.dropout),
                nn.Linear(width, cfg.head_hidden),
                make_activation(cfg.activation),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.head_hidden, num_outputs),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, T, D*H)
        last = out[:, -1, : self.hidden_size]  # forward direction at the last step, (B, H)
        if self.bidirectional:
            # backward direction has read the whole sequence at t=0
            first = out[:, 0, self.hidden_size :]
            last = torch.cat([last, first], dim=1)  # (B, 2H)
        return self.head(last)  # (B, out)
