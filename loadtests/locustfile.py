"""Locust scenario: single-row /predict requests (and some OIP v2 infer calls) to any served model.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000
The rows are drawn from the model's training statistics, which the server's v2 metadata lists.
Environment: NNSHIP_LOADTEST_ROWS (an .npy file of rows to send instead), NNSHIP_LOADTEST_MODEL (the
model's name; default: the one the server names), NNSHIP_API_KEY (sent as a bearer token when set),
NNSHIP_LOADTEST_FAILURE (a file that receives the first failing request's status and body).
"""

import itertools
import json
import os

import gevent
import numpy as np
from locust import FastHttpUser, between, events, task

from nnship.io import atomic_write_json
from nnship.loadtests.rows import BODY_CHARS, auth_headers, drawn_rows, served_model

API_KEY = os.environ.get("NNSHIP_API_KEY")
HEADERS = {"Content-Type": "application/json", **auth_headers(API_KEY)}
FAILURE_FILE = os.environ.get("NNSHIP_LOADTEST_FAILURE")
SCENARIO: dict = {"rows": [], "model": os.environ.get("NNSHIP_LOADTEST_MODEL")}


@events.init.add_listener
def _prepare(environment, **_) -> None:
    """Load or draw the rows, then refresh gevent's cached clock: after a slow start-up Locust's
    --run-time timer would be measured from a stale clock and end the run at once."""
    rows_file = os.environ.get("NNSHIP_LOADTEST_ROWS")
    if rows_file:
        rows = np.load(rows_file, allow_pickle=False)
    else:
        served = served_model(
            environment.host.rstrip("/"), SCENARIO["model"], auth_headers(API_KEY)
        )
        SCENARIO["model"] = served.name
        rows = drawn_rows(served)
    SCENARIO["rows"] = rows.tolist()
    gevent.get_hub().loop.update_now()


@events.request.add_listener
def _first_failure(request_type, name, response, exception, **_) -> None:
    """Keep the first failing request's status and body (the one that says why)."""
    if exception is None or not FAILURE_FILE or SCENARIO.get("failed"):
        return
    SCENARIO["failed"] = True
    status = getattr(response, "status_code", 0) or 0
    body = (getattr(response, "text", None) or "")[:BODY_CHARS]
    record = {"request": f"{request_type} {name}", "status": status, "body": body}
    atomic_write_json(FAILURE_FILE, {**record, "error": str(exception)[:BODY_CHARS]})


def _one_prediction(text: str | None) -> bool:
    try:
        return len(json.loads(text or "").get("predictions", [])) == 1
    except (ValueError, AttributeError):
        return False


class PredictUser(FastHttpUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.rows = itertools.cycle(SCENARIO["rows"])

    @task(9)
    def predict(self) -> None:
        with self.client.post(
            "/predict", json={"inputs": [next(self.rows)]}, headers=HEADERS, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
            elif not _one_prediction(r.text):
                r.failure("the answer does not hold one prediction")

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
            f"/v2/models/{SCENARIO['model']}/infer",
            json=body,
            headers=HEADERS,
            name="/v2/infer",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
