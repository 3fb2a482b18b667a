"""Preprocessing folded into the network as fixed buffers: standardize -> select k features -> PCA."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

STANDARDIZE = ("element", "channel", "feature", "none")


@dataclass
class PreprocessConfig:
    # (x - mean) / std, fitted per: "element" (each input value: tabular data), "channel" (images,
    # axis 0 of C×H×W), "feature" (sequences, last axis of T×F), or "none"; a constant's std counts as 1
    standardize: str = "element"
    select_k: int = 0  # keep the k most informative features by ANOVA F-score (0 = keep all)
    pca: int = 0  # project onto this many principal components (0 = no projection)

    def __post_init__(self) -> None:
        if self.standardize not in STANDARDIZE:
            raise ValueError(
                f"standardize must be one of {', '.join(STANDARDIZE)}, got {self.standardize!r}"
            )
        for name in ("select_k", "pca"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")

    @property
    def flattens(self) -> bool:
        return bool(self.select_k or self.pca)


class Preprocess(nn.Module):
    """(B, *input_shape) raw -> (B, *input_shape) standardized, or (B, k) when selecting/projecting."""

    def __init__(self, cfg: PreprocessConfig, input_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.input_shape = tuple(input_shape)
        d = math.prod(input_shape)
        if cfg.select_k > d:
            raise ValueError(f"select_k={cfg.select_k} exceeds the {d} input features")
        k = cfg.select_k or d
        if cfg.pca > k:
            raise ValueError(f"pca={cfg.pca} exceeds the {k} features it would project")
        stat_shape = {
            "element": (d,),
            "none": (d,),
            "feature": input_shape[-1:],
            "channel": (input_shape[0], 1, 1),
        }[cfg.standardize]
        if cfg.standardize == "channel" and len(input_shape) != 3:
            raise ValueError(
                f"standardize='channel' needs inputs shaped (C, H, W), got {input_shape}"
            )
        # broadcasts over (B, D), (B, C, H, W), (B, T, F)
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("scale", torch.ones(stat_shape))
        self.register_buffer("selected", torch.arange(k, dtype=torch.long))
        n = cfg.pca or 0
        self.register_buffer("pca_mean", torch.zeros(k if n else 0))
        self.register_buffer("pca_components", torch.zeros(n, k if n else 0))
        self.output_shape: tuple[int, ...] = (n or k,) if cfg.flattens else self.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.cfg.standardize
        if mode == "element":
            z = ((x.reshape(x.shape[0], -1) - self.mean) / self.scale).reshape(x.shape)
        elif mode != "none":
            z = (x - self.mean) / self.scale  # (C, 1, 1) or (F,) statistics; any H, W or T
        else:
            z = x
        if not self.cfg.flattens:
            return z
        z = z.reshape(x.shape[0], -1)  # (B, D)
        if self.cfg.select_k:
            z = z.index_select(1, self.selected)  # (B, k)
        if self.cfg.pca:
            z = (z - self.pca_mean) @ self.pca_components.T  # (B, n)
        return z

    @torch.no_grad()
    def fit(self, x: np.ndarray, y: np.ndarray, task: str, seed: int = 0) -> Preprocess:
        """Fit every buffer on the training split with scikit-learn's own transforms."""
        from sklearn.decomposition import PCA
        from sklearn.feature_selection import SelectKBest, f_classif, f_regression

        x = x.astype(np.float64)
        z = x.reshape(len(x), -1)
        if self.cfg.standardize != "none":
            mean, scale = (a.reshape(self.mean.shape) for a in self._group_stats(x))
            self.mean.copy_(torch.from_numpy(mean))
            self.scale.copy_(torch.from_numpy(scale))
            z = (
                (z - mean) / scale if self.cfg.standardize == "element" else (x - mean) / scale
            ).reshape(len(x), -1)
        if self.cfg.select_k:
            score = f_classif if task == "classification" else f_regression
            with np.errstate(divide="ignore", invalid="ignore"):
                selector = SelectKBest(score, k=self.cfg.select_k).fit(z, y)
            self.selected.copy_(torch.from_numpy(np.flatnonzero(selector.get_support())))
            z = selector.transform(z)
        if self.cfg.pca:
            pca = PCA(self.cfg.pca, svd_solver="full", random_state=seed).fit(z)
            self.pca_mean.copy_(torch.from_numpy(pca.mean_))
            self.pca_components.copy_(torch.from_numpy(pca.components_))
        return self

    def _group_stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and scale per element, per channel or per sequence feature (StandardScaler's rule)."""
        from sklearn.preprocessing import StandardScaler

        mode, shape = self.cfg.standardize, self.input_shape
        if mode == "element":
            groups = x.reshape(len(x), -1)
        elif mode == "channel":  # (N, C, H, W) -> C columns
            groups = np.moveaxis(x, 1, -1).reshape(-1, shape[0])
        else:  # feature: (N, T, F) -> F columns
            groups = x.reshape(-1, shape[-1])
        scaler = StandardScaler().fit(groups)
        return scaler.mean_, scaler.scale_
