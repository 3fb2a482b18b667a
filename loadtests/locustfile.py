"""Locust scenario: single-row /predict requests with real test-split rows (and some OIP v2 calls).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000
Environment: NNSHIP_LOADTEST_DATASET (default digits), NNSHIP_LOADTEST_MODEL (for /v2; default digits-cnn),
NNSHIP_API_KEY (sent as a bearer token when set).
"""

import itertools
import os

import gevent
import numpy as np
from locust import FastHttpUser, between, events, task

from nnship.loadtests.rows import test_rows

ROWS = test_rows(os.environ.get("NNSHIP_LOADTEST_DATASET", "digits"))
MODEL = os.environ.get("NNSHIP_LOADTEST_MODEL", "digits-cnn")
HEADERS = {"Content-Type": "application/json"}
if os.environ.get("NNSHIP_API_KEY"):
    HEADERS["Authorization"] = f"Bearer {os.environ['NNSHIP_API_KEY']}"


@events.init.add_listener
def _fresh_clock(**_) -> None:
    """gevent caches its loop's time: after a slow start-up (imports, data loading on a busy machine)
    Locust's --run-time timer would be measured from a stale clock and end the run at once."""
    gevent.get_hub().loop.update_now()


class PredictUser(FastHttpUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.rows = itertools.cycle(ROWS)

    @task(9)
    def predict(self) -> None:
        with self.client.post(
            "/predict", json={"inputs": [next(self.rows)]}, headers=HEADERS, catch_response=True
        ) as r:
            if r.status_code != 200 or len(r.json().get("predictions", [])) != 1:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")

    @task(1)
    def infer_v2(self) -> None:
        x = np.asarray(next(self.rows), dtype=np.float32)
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, *x.shape],
                    "datatype": "FP32",
                    "data": x.reshape(-1).tolist(),
                }
            ]
        }
        with self.client.post(
            f"/v2/models/{MODEL}/infer",
            json=body,
            headers=HEADERS,
            name="/v2/infer",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
