"""The OpenAPI document's shapes and statuses, built from a manifest without a server."""

from types import SimpleNamespace

from nnship.service.openapi import document
from nnship.service.validation import Validator
from tests import manifests


def manifest(family, shape, task="classification"):
    return manifests.manifest(family, shape, task, high=1.0)


def served(family, shape, task="classification", max_rows=8):
    labels = ["a", "b"] if task == "classification" else []
    return SimpleNamespace(
        model="m",
        version="v1",
        labels=labels,
        classification=task == "classification",
        runtime=SimpleNamespace(variant="fp32"),
        validator=Validator(manifest(family, shape, task), max_rows=max_rows, max_seq_len=20),
    )


BASE = {
    "info": {},
    "paths": {
        "/livez": {"get": {"responses": {"200": {"description": "ok"}}}},
        "/readyz": {"get": {"responses": {"200": {"description": "ok"}}}},
        "/predict": {"post": {"responses": {}, "requestBody": {}}},
    },
    "components": {"schemas": {"predict__Input": {}}},
}


def _axes(schema):
    out = []
    while schema.get("type") == "array":
        out.append((schema["minItems"], schema["maxItems"]))
        schema = schema["items"]
    return out, schema


def test_image_and_sequence_shapes():
    doc = document(BASE, served("cnn", [1, 2, 3]))
    axes, leaf = _axes(doc["components"]["schemas"]["PredictRequest"]["properties"]["inputs"])
    assert axes == [(1, 8), (1, 1), (2, 2), (3, 3)] and leaf["maximum"] > 3e38
    doc = document(BASE, served("gru", [5, 3]))
    axes, _ = _axes(doc["components"]["schemas"]["PredictRequest"]["properties"]["inputs"])
    assert axes == [(1, 8), (1, 20), (3, 3)]
    assert "sequence length" in doc["info"]["description"]


def test_regression_answer_and_outputs():
    doc = document(BASE, served("mlp", [4], task="regression"))
    schemas = doc["components"]["schemas"]
    answer = schemas["PredictAnswer"]
    assert "probabilities" not in answer["properties"]
    assert answer["properties"]["predictions"]["items"] == {"type": "number"}
    outputs = schemas["V2InferRequest"]["properties"]["outputs"]
    assert outputs["maxItems"] == 1 and outputs["items"]["properties"]["name"]["enum"] == ["output"]
    assert "predict__Input" not in schemas  # BentoML's loose schemas are replaced


def test_every_status_documented_and_base_untouched():
    doc = document(BASE, served("mlp", [4]))
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) == {"200", "401", "429", "500", "503"}
    assert set(doc["paths"]["/livez"]["get"]["responses"]) == {"200", "500"}
    assert BASE["paths"]["/predict"]["post"]["responses"] == {}


def test_tabular_records_csv_and_named_out_of_range():
    doc = document(BASE, served("mlp", [3]))
    schemas = doc["components"]["schemas"]
    record = schemas["PredictRecord"]
    assert list(record["properties"]) == record["required"] == ["f0", "f1", "f2"]
    assert record["additionalProperties"] is False
    positional, records = schemas["PredictRequest"]["properties"]["inputs"]["anyOf"]
    assert _axes(positional)[0] == [(1, 8), (3, 3)]
    assert records["items"] == {"$ref": "#/components/schemas/PredictRecord"}
    content = doc["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "text/csv"}
    assert "header row of feature names" in schemas["PredictCSV"]["description"]
    entry = schemas["PredictAnswer"]["properties"]["out_of_range"]["items"]
    assert entry["required"] == ["row", "features"]
    assert entry["properties"]["features"]["items"] == {"enum": ["f0", "f1", "f2"]}
    image = document(BASE, served("cnn", [1, 2, 3]))
    assert "PredictRecord" not in image["components"]["schemas"]
    assert set(image["paths"]["/predict"]["post"]["requestBody"]["content"]) == {"application/json"}
