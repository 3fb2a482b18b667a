"""Feature drift as Prometheus sees it: a running service's nnship_feature_drift_psi per feature."""

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from nnship.training.data import load_dataset, split
from tests.server import iris_env, running_server

WINDOW = 150
THRESHOLD = 0.2  # the usual "significant shift" level of the index, and the alert's


def drift(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        s.labels["feature"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "nnship_feature_drift_psi"
        for s in f.samples
    }


def send(url: str, rows: np.ndarray, requests: int = 5) -> None:
    for chunk in np.array_split(rows, requests):
        r = httpx.post(f"{url}/predict", json={"inputs": chunk.tolist()}, timeout=30)
        assert r.status_code == 200, r.text


def test_shifted_inputs_raise_the_drift_gauge(iris_package):
    data = split(load_dataset("iris"))
    real = np.concatenate([data.x_test, data.x_val, data.x_train])  # all 150 real iris rows
    shifted = np.resize(data.x_test + data.x_train.std(axis=0), (WINDOW, 4))
    features = iris_package["input"]["feature_names"]
    with running_server(iris_env(iris_package, drift_window=str(WINDOW))) as (url, _):
        send(url, real[: WINDOW - 10])
        assert drift(url) == {}  # a part-filled window publishes nothing
        send(url, real[WINDOW - 10 :], requests=1)  # rows enter the window 1/20 of it at a time
        unshifted = drift(url)
        assert set(unshifted) == set(features)
        assert max(unshifted.values()) < THRESHOLD, unshifted
        send(url, shifted)
        moved = drift(url)
        assert min(moved.values()) > THRESHOLD, moved
