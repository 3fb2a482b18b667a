"""The OpenAPI document describes the real contract, and schemathesis finds no request that breaks it
(a short run; `make fuzz` is the long one)."""

import json

import httpx
import pytest

from nnship.loadtests.fuzz import run, summarize
from tests.server import iris_env, running_server

ROUTES = {
    "GET /healthz",
    "GET /livez",
    "GET /readyz",
    "GET /metrics",
    "POST /predict",
    "GET /v2",
    "GET /v2/",
    "POST /v2/repository/index",
    "POST /v2/repository/models/{name}/load",
    "POST /v2/repository/models/{name}/unload",
    "GET /v2/models/{name}/config",
    "GET /v2/models/{name}/versions/{version}/config",
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/ready",
    "POST /v2/models/{name}/infer",
    "GET /v2/models/{name}/versions/{version}",
    "GET /v2/models/{name}/versions/{version}/ready",
    "POST /v2/models/{name}/versions/{version}/infer",
}

MODEL_CONTROL = {
    "POST /v2/repository/models/{name}/load",
    "POST /v2/repository/models/{name}/unload",
}


@pytest.fixture(scope="module")
def server(iris_package):
    with running_server(iris_env(iris_package, max_rows="64")) as (url, _):
        yield url, iris_package["version"]


def test_document_describes_the_loaded_model(server):
    url, version = server
    doc = httpx.get(f"{url}/docs.json").json()
    assert {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item} == ROUTES
    schemas = doc["components"]["schemas"]
    rows, records = schemas["PredictRequest"]["properties"]["inputs"]["anyOf"]
    assert (
        (rows["minItems"], rows["maxItems"])
        == (1, 64)
        == (records["minItems"], records["maxItems"])
    )
    assert schemas["PredictRecord"]["required"] == [
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    ]
    row = rows["items"]
    assert (row["minItems"], row["maxItems"]) == (4, 4)
    assert row["items"] == {
        "type": "number",
        "minimum": -3.4028234663852886e38,
        "maximum": 3.4028234663852886e38,
    }
    answer = schemas["PredictAnswer"]
    assert answer["additionalProperties"] is False and "probabilities" in answer["required"]
    assert schemas["Error"]["properties"]["detail"]["type"] == "array"
    predict = doc["paths"]["/predict"]["post"]["responses"]
    assert set(predict) == {"200", "400", "401", "413", "415", "422", "429", "500", "503", "504"}
    infer = doc["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert set(infer["responses"]) == set(predict) | {"404"}
    assert infer["parameters"][1]["schema"]["enum"] == [version]
    assert schemas["V2InferRequest"]["properties"]["outputs"]["maxItems"] == 2


def test_schemathesis_finds_nothing(server, tmp_path):
    url, _ = server
    rc = run(url, max_examples=8, seed=0, workers=1, out=tmp_path)
    summary = summarize(tmp_path)
    assert summary["failures"] == {} and summary["errors"] == 0, summary
    assert rc == 0
    assert set(summary["routes"]) == ROUTES
    assert summary["requests"] >= 300, summary
    assert not [s for s in summary["statuses"] if s >= 500], summary
    assert set(summary["positive"]) <= {200, 400, 422}, summary
    assert summary["positive"].get(200, 0) >= 50, summary
    calls = [json.loads(line) for line in (tmp_path / "calls.ndjson").read_text().splitlines()]
    refused = {c["route"] for c in calls if c["positive"] and c["status"] == 400}
    assert refused <= MODEL_CONTROL, refused  # schema-valid requests refused: model control only
