import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.feature_selection import SelectKBest, f_classif, f_regression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nnship.models.preprocess import Preprocess, PreprocessConfig


def _data(task):
    rng = np.random.default_rng(1)
    x = rng.normal(5, 3, (300, 12)) * rng.uniform(0.1, 50, 12)
    x[:, 4] = 7.0  # a constant feature: its scale must be 1, not 0
    y = (x[:, 0] + x[:, 3] > 0).astype(int) if task == "classification" else x[:, 1] * 0.3 + x[:, 2]
    return x, y


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_folded_layers_equal_sklearn(task):
    x, y = _data(task)
    pre = Preprocess(PreprocessConfig(standardize="element", select_k=8, pca=5), (12,)).double()
    pre.fit(x, y, task)
    score = f_classif if task == "classification" else f_regression
    ref = make_pipeline(StandardScaler(), SelectKBest(score, k=8), PCA(5, svd_solver="full")).fit(
        x, y
    )
    x_new = np.random.default_rng(2).normal(5, 30, (50, 12))  # data never fitted on
    ours = pre(torch.from_numpy(x_new)).numpy()
    np.testing.assert_allclose(ours, ref.transform(x_new), atol=1e-6, rtol=0)


def test_each_step_alone_equals_sklearn():
    x, y = _data("classification")
    t = torch.from_numpy(x)
    std = Preprocess(PreprocessConfig(), (12,)).double().fit(x, y, "classification")
    np.testing.assert_allclose(std(t).numpy(), StandardScaler().fit(x).transform(x), atol=1e-6)
    sel = (
        Preprocess(PreprocessConfig(standardize="none", select_k=4), (12,))
        .double()
        .fit(x, y, "classification")
    )
    np.testing.assert_allclose(
        sel(t).numpy(), SelectKBest(f_classif, k=4).fit(x, y).transform(x), atol=1e-6
    )
    pca = (
        Preprocess(PreprocessConfig(standardize="none", pca=3), (12,))
        .double()
        .fit(x, y, "classification")
    )
    np.testing.assert_allclose(
        pca(t).numpy(), PCA(3, svd_solver="full").fit(x).transform(x), atol=1e-6
    )


def test_channel_and_feature_standardization():
    rng = np.random.default_rng(0)
    img = rng.normal(3, 2, (40, 2, 4, 4))
    pre = (
        Preprocess(PreprocessConfig(standardize="channel"), (2, 4, 4))
        .double()
        .fit(img, None, "classification")
    )
    out = pre(torch.from_numpy(img)).numpy()
    assert out.shape == img.shape
    for c in range(2):
        assert abs(out[:, c].mean()) < 1e-9 and abs(out[:, c].std() - 1) < 1e-9
    seq = rng.normal(3, 2, (40, 6, 3)) * np.array([1, 10, 100])
    pre = (
        Preprocess(PreprocessConfig(standardize="feature"), (6, 3))
        .double()
        .fit(seq, None, "classification")
    )
    out = pre(torch.from_numpy(seq)).numpy()
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), 1, atol=1e-9)


def test_bad_preprocess_config():
    with pytest.raises(ValueError, match="select_k=20 exceeds the 12 input features"):
        Preprocess(PreprocessConfig(select_k=20), (12,))
    with pytest.raises(ValueError, match="standardize must be one of"):
        PreprocessConfig(standardize="zscore")
    with pytest.raises(ValueError, match=r"standardize='channel' needs inputs shaped \(C, H, W\)"):
        Preprocess(PreprocessConfig(standardize="channel"), (12,))
