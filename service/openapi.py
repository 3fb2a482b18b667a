"""The OpenAPI document at /docs.json: BentoML's own, made to describe the contract of the model
actually loaded.

BentoML builds its document from the declared APIs (`_bentoml_sdk/service/openapi.py`): `/predict`
takes any list, answers any object, errors carry `detail` as a string, and the v2 routes (a mounted
Starlette app) are missing. This module starts from that document and replaces what it gets wrong:
the request's nested arrays with the package's shape, float32 bounds and the row limit; the answer
object; the error body nnship sends; every status a route can answer; and the Open Inference
Protocol v2 routes with their request and response schemas.

Two rules of the v2 request cannot be written in OpenAPI 3.0 and are stated in words: the tensor's
`shape` is `[N, *input_shape]` with N rows in `data`, and each output is named at most once.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from nnship.service.oip import STATE
from nnship.service.security import ALWAYS_OPEN
from nnship.service.validation import F32_MAX

log = logging.getLogger(__name__)

REF = "#/components/schemas/{}"
BINARY_EXTENSION = (
    "Tensor data in JSON, or binary (the binary tensor data extension, as tritonclient sends it by "
    "default): the body is the JSON request, then the input's FP32 little-endian row-major bytes; "
    "the `Inference-Header-Content-Length` header gives the JSON part's length and the tensor's "
    "`parameters.binary_data_size` the byte count (4 per value of its shape). Outputs requested "
    "with `parameters.binary_data: true` (or all, with `parameters.binary_data_output: true` and "
    "no `outputs`) are answered the same way, as application/octet-stream with the "
    "`Inference-Header-Content-Length` response header."
)
ERRORS = {
    400: "The request breaks a rule of the contract (`detail` names the field and the rule)",
    401: "Missing or wrong API key (when a key is configured)",
    404: "Unknown model name or version",
    413: "The body is larger than the limit (NNSHIP_MAX_BODY_BYTES) or than any valid request",
    415: "Content type other than application/json",
    422: "Well-formed, but not answerable: the model's output is not finite for these inputs, or "
    "(strict range mode) inputs outside the training range",
    429: "Rate limit, failed-authentication limit or concurrency limit reached (see Retry-After)",
    500: "Internal error (no details are disclosed; the request id is logged)",
    503: "Overloaded (the request would miss the batching deadline) or the model is loading",
    504: "Not answered within the request timeout (NNSHIP_TIMEOUT_S)",
}
INFER_STATUSES = (400, 401, 413, 415, 422, 429, 500, 503, 504)
META_STATUSES = (400, 401, 429, 500, 503)  # 400: a refused path spelling
INFRA_STATUSES = {  # 401/429 only with NNSHIP_PROTECT_ALL, which leaves the liveness probes open
    "/livez": (500,),
    "/healthz": (500,),
    "/readyz": (401, 429, 500, 503),
    "/metrics": (401, 429, 500),
}


def _number() -> dict[str, Any]:
    return {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX}


def _rows(validator: Any) -> dict[str, Any]:
    """[N, *input_shape] nested arrays of float32-range numbers, 1 <= N <= max_rows."""
    inner: dict[str, Any] = _number()
    for axis, dim in reversed(list(enumerate(validator.shape))):
        low, high = (1, validator.max_seq) if validator.sequence and axis == 0 else (dim, dim)
        inner = {"type": "array", "minItems": low, "maxItems": high, "items": inner}
    return {"type": "array", "minItems": 1, "maxItems": validator.max_rows, "items": inner}


def _records(validator: Any) -> dict[str, Any]:
    """Records keyed by feature name, 1 <= N <= max_rows (tabular models)."""
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": validator.max_rows,
        "items": {"$ref": REF.format("PredictRecord")},
    }


def _record(validator: Any) -> dict[str, Any]:
    """One row keyed by feature name: every feature, in input order, and no other name."""
    names = validator.feature_names
    return {
        "type": "object",
        "required": list(names),
        "additionalProperties": False,
        "properties": {n: _number() for n in names},
        "description": f"one row keyed by feature name; the features in input order: {names}",
    }


def _flagged(validator: Any) -> dict[str, Any]:
    """The rows with a value outside the training range, each with the features concerned."""
    return {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["row", "features"],
            "additionalProperties": False,
            "properties": {
                "row": {"type": "integer", "minimum": 0, "maximum": validator.max_rows - 1},
                "features": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"enum": list(validator.feature_names)},
                },
            },
        },
        "description": "one entry per row with a value outside the training range (± margin): "
        "the row and its features outside it (for sequences, the channels outside it at any step)",
    }


def _dims(validator: Any) -> str:
    return ", ".join(
        "T" if validator.sequence and i == 0 else str(d) for i, d in enumerate(validator.shape)
    )


def _labels_schema(labels: list[Any], max_rows: int) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "maxItems": max_rows, "items": {"enum": labels}}


def _schemas(svc: Any) -> dict[str, Any]:
    """The components: requests, answers and the error body."""
    v = svc.validator
    rows = _rows(v)
    n_out = len(svc.labels) if svc.classification else 1
    answer: dict[str, Any] = {
        "model": {"type": "string", "enum": [svc.model]},
        "version": {"type": "string", "enum": [svc.version]},
        "variant": {"type": "string", "enum": [svc.runtime.variant]},
        "out_of_range": _flagged(v),
    }
    required = ["model", "version", "variant", "predictions"]
    if svc.classification:
        answer["predictions"] = _labels_schema(svc.labels, v.max_rows)
        answer["probabilities"] = {
            "type": "array",
            "minItems": 1,
            "maxItems": v.max_rows,
            "items": {
                "type": "array",
                "minItems": n_out,
                "maxItems": n_out,
                "items": {"type": "number", "minimum": 0, "maximum": 1},
            },
        }
        required.append("probabilities")
    else:
        answer["predictions"] = {
            "type": "array",
            "minItems": 1,
            "maxItems": v.max_rows,
            "items": {"type": "number"},
        }
    object_ = {"type": "object"}
    output_names = list(v.outputs)
    inputs = {
        **rows,
        "description": f"rows shaped [N, {_dims(v)}], 1 <= N <= {v.max_rows}"
        + (", every row of one sequence length T" if v.sequence else ""),
    }
    named: dict[str, Any] = {}
    if v.named:
        inputs = {
            "anyOf": [inputs, _records(v)],
            "description": f"either positional rows shaped [N, {_dims(v)}], values in feature "
            f"order, or records keyed by feature name; 1 <= N <= {v.max_rows}, all rows of one "
            f"form. Features in input order: {v.feature_names}",
        }
        named["PredictRecord"] = _record(v)
        named["PredictCSV"] = {
            **_records(v),
            "description": "text/csv: a header row of feature names (any order, each feature once, "
            "no other column), then one row of numbers per line (blank lines skipped)",
        }
    return {
        **named,
        "PredictRequest": {
            "type": "object",
            "required": ["inputs"],
            "additionalProperties": False,
            "properties": {"inputs": inputs},
        },
        "PredictAnswer": {
            "type": "object",
            "required": required,
            "additionalProperties": False,
            "properties": answer,
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "detail": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["loc", "type", "msg"],
                        "properties": {
                            "loc": {
                                "type": "array",
                                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                            },
                            "type": {"type": "string", "description": "the rule broken"},
                            "msg": {"type": "string"},
                        },
                    },
                },
                "request_id": {"type": "string"},
            },
        },
        "V2InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "properties": {
                        "binary_data_output": {
                            "type": "boolean",
                            "description": "with no `outputs` listed: every output as binary data",
                        }
                    },
                },
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "datatype", "shape", "data"],
                        "properties": {
                            "name": {"type": "string", "enum": ["input"]},
                            "datatype": {"type": "string", "enum": ["FP32"]},
                            "shape": {
                                "type": "array",
                                "minItems": len(v.shape) + 1,
                                "maxItems": len(v.shape) + 1,
                                "items": {"type": "integer", "minimum": 1},
                                "description": f"[N, {_dims(v)}] for the N rows in `data`",
                            },
                            "data": {
                                **rows,
                                "description": "the rows, nested as the shape (a flat row-major "
                                "list of the same values is accepted too)",
                            },
                            "parameters": {
                                "type": "object",
                                "properties": {"binary_data_size": {"not": {}}},
                                "description": "`binary_data_size` only in a binary request (the "
                                "binary tensor data extension: see the operation's description)",
                            },
                        },
                    },
                },
                "outputs": {
                    "type": "array",
                    "maxItems": len(output_names),
                    "description": "each output named at most once; all outputs when left out",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"enum": output_names},
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "binary_data": {
                                        "type": "boolean",
                                        "description": "send this output as binary data",
                                    },
                                    "classification": {"not": {}},
                                },
                            },
                        },
                    },
                },
            },
        },
        "V2InferResponse": {
            "type": "object",
            "required": ["model_name", "model_version", "outputs", "parameters"],
            "additionalProperties": False,
            "properties": {
                "model_name": {"type": "string", "enum": [svc.model]},
                "model_version": {"type": "string", "enum": [svc.version]},
                "id": {"type": "string"},
                "outputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": len(output_names),
                    "items": {
                        "type": "object",
                        "required": ["name", "datatype", "shape"],
                        "additionalProperties": False,
                        "description": "values in `data`, or (binary outputs) "
                        "`parameters.binary_data_size` bytes after the JSON header",
                        "properties": {
                            "name": {"enum": output_names},
                            "parameters": {
                                "type": "object",
                                "required": ["binary_data_size"],
                                "properties": {
                                    "binary_data_size": {"type": "integer", "minimum": 4}
                                },
                            },
                            "datatype": {"enum": ["FP32"]},
                            "shape": {
                                "type": "array",
                                "minItems": 2,
                                "maxItems": 2,
                                "items": {"type": "integer", "minimum": 1},
                                "description": f"[N, {n_out}]",
                            },
                            "data": {
                                "type": "array",
                                "minItems": n_out,
                                "maxItems": n_out * v.max_rows,
                                "items": {"type": "number"},
                            },
                        },
                    },
                },
                "parameters": {
                    "type": "object",
                    "required": ["variant"],
                    "properties": {
                        "variant": {"type": "string"},
                        "out_of_range": {
                            "type": "string",
                            "description": 'JSON list, one {"row", "features"} entry per row '
                            "outside the training range, as `out_of_range` of /predict",
                        },
                    },
                },
            },
        },
        "V2ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "V2ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": {"$ref": REF.format("V2TensorMetadata")}},
                "outputs": {"type": "array", "items": {"$ref": REF.format("V2TensorMetadata")}},
                "parameters": object_,
            },
        },
        "V2TensorMetadata": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "V2ModelConfig": {
            "type": "object",
            "required": ["name", "platform", "max_batch_size", "input", "output"],
            "description": "the model configuration in Triton's JSON form (dims without the batch "
            "axis; -1 for the sequence axis)",
            "properties": {
                "name": {"type": "string", "enum": [svc.model]},
                "platform": {"type": "string"},
                "backend": {"type": "string"},
                "max_batch_size": {"type": "integer", "enum": [v.max_rows]},
                "version_policy": object_,
                "input": {"type": "array", "items": {"$ref": REF.format("V2ConfigTensor")}},
                "output": {"type": "array", "items": {"$ref": REF.format("V2ConfigTensor")}},
                "dynamic_batching": object_,
                "instance_group": {"type": "array", "items": object_},
                "parameters": object_,
            },
        },
        "V2ConfigTensor": {
            "type": "object",
            "required": ["name", "data_type", "dims"],
            "properties": {
                "name": {"type": "string"},
                "data_type": {"type": "string", "enum": ["TYPE_FP32"]},
                "format": {"type": "string"},
                "dims": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "V2RepositoryIndexRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ready": {"type": "boolean", "description": "list only the models ready now"}
            },
        },
        "V2RepositoryIndex": {
            "type": "array",
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "version", "state"],
                "properties": {
                    "name": {"type": "string", "enum": [svc.model]},
                    "version": {"type": "string", "enum": [svc.version]},
                    "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                    "reason": {"type": "string"},
                },
            },
        },
        "V2Live": _flag("live"),
        "V2Ready": _flag("ready"),
        "V2ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
    }


def _flag(name: str) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: {"type": "boolean"}}}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(schema)}}},
    }


def _responses(ok: str, statuses: tuple[int, ...], ok_status: int = 200) -> dict[str, Any]:
    out = {str(ok_status): _json(ok, "Successful Response")}
    out.update({str(s): _json("Error", ERRORS[s]) for s in sorted(statuses)})
    return out


def _path_params(svc: Any, version: bool) -> list[dict[str, Any]]:
    params = [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": [svc.model]},
        }
    ]
    if version:
        params.append(
            {
                "name": "version",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": [svc.version]},
            }
        )
    return params


def _v2_paths(svc: Any) -> dict[str, Any]:
    """The Open Inference Protocol v2 routes, as mounted under /v2."""
    tag = ["Open Inference Protocol v2"]
    server = _op("v2_server_metadata", "V2ServerMetadata", META_STATUSES, tag)
    paths: dict[str, Any] = {
        "/v2": {"get": server},
        "/v2/": {"get": {**server, "operationId": "v2_server_metadata_slash"}},
        "/v2/health/live": {"get": _op("v2_live", "V2Live", (401, 429, 500), tag)},
        "/v2/health/ready": {"get": _op("v2_ready", "V2Ready", (401, 429, 500, 503), tag)},
        "/v2/repository/index": {
            "post": {
                **_op(
                    "v2_repository_index", "V2RepositoryIndex", (400, 401, 415, 429, 500, 503), tag
                ),
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": REF.format("V2RepositoryIndexRequest")}
                        }
                    },
                },
            }
        },
    }
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{name}}/{action}"] = {"post": _model_control(action, tag)}
    for version in (False, True):
        base = "/v2/models/{name}" + ("/versions/{version}" if version else "")
        suffix = "_version" if version else ""
        params = _path_params(svc, version)
        paths[base] = {
            "get": {
                **_op(f"v2_model_metadata{suffix}", "V2ModelMetadata", (404, *META_STATUSES), tag),
                "parameters": params,
            }
        }
        paths[f"{base}/ready"] = {
            "get": {
                **_op(f"v2_model_ready{suffix}", "V2ModelReady", (404, *META_STATUSES), tag),
                "parameters": params,
            }
        }
        paths[f"{base}/config"] = {
            "get": {
                **_op(f"v2_model_config{suffix}", "V2ModelConfig", (404, *META_STATUSES), tag),
                "parameters": params,
            }
        }
        infer = _op(f"v2_infer{suffix}", "V2InferResponse", (404, *INFER_STATUSES), tag)
        infer["description"] = BINARY_EXTENSION
        infer["responses"]["200"]["content"]["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"}
        }
        paths[f"{base}/infer"] = {
            "post": {
                **infer,
                "parameters": params,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": REF.format("V2InferRequest")}}
                    },
                },
            }
        }
    return paths


def _model_control(action: str, tags: list[str]) -> dict[str, Any]:
    """Triton's model control: refused, this server serves the one model it started with."""
    responses = {str(s): _json("Error", ERRORS[s]) for s in (401, 415, 429, 500)}
    responses["400"] = _json(
        "Error", "Always: this server serves one model; loading and unloading is refused"
    )
    return {
        "operationId": f"v2_repository_{action}",
        "tags": tags,
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "responses": responses,
    }


def _op(op_id: str, ok: str, statuses: tuple[int, ...], tags: list[str]) -> dict[str, Any]:
    return {"operationId": op_id, "tags": tags, "responses": _responses(ok, statuses)}


def _secure(doc: dict[str, Any], protect_all: bool) -> None:
    """Declare the API key (bearer or X-API-Key) and require it where the guard does."""
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if method not in ("get", "head") or (protect_all and path not in ALWAYS_OPEN):
                op["security"] = [{"bearer": []}, {"apiKey": []}]


def document(
    base: dict[str, Any], svc: Any, keyed: bool = False, protect_all: bool = False
) -> dict[str, Any]:
    """BentoML's document `base` (from `Service.openapi_spec`), made to match the loaded model;
    `keyed`: an API key is configured (with `protect_all`, for reads too)."""
    doc = copy.deepcopy(base)
    doc["info"]["title"] = f"nnship: {svc.model}"
    doc["info"]["version"] = svc.version
    doc["info"]["description"] = (
        f"Serves model {svc.model} version {svc.version} ({svc.runtime.variant}). Rules that "
        "OpenAPI 3.0 cannot express: v2 `shape` is [N, *input_shape] for the N rows in `data`; "
        "each v2 output is named at most once"
        + (
            "; the rows of one request share one sequence length."
            if svc.validator.sequence
            else "."
        )
    )
    doc["components"] = {"schemas": _schemas(svc)}
    paths = doc["paths"]
    for path, statuses in INFRA_STATUSES.items():
        if path in paths:
            for status in statuses:
                paths[path]["get"]["responses"][str(status)] = _json("Error", ERRORS[status])
    predict = paths["/predict"]["post"]
    content = {"application/json": {"schema": {"$ref": REF.format("PredictRequest")}}}
    if svc.validator.named:
        content["text/csv"] = {"schema": {"$ref": REF.format("PredictCSV")}}
    predict["requestBody"] = {"required": True, "content": content}
    predict["responses"] = _responses("PredictAnswer", INFER_STATUSES)
    paths.update(_v2_paths(svc))
    for path in [p for p in paths if p == "/batch" or p.startswith("/batch/")]:
        del paths[path]  # BentoML's task routes: multipart uploads, documented in the README
    if keyed:
        _secure(doc, protect_all)
    return doc


class OpenAPIDocument:
    """ASGI middleware answering GET /docs.json with `document()`, built once the model is loaded
    (until then BentoML's own document answers)."""

    def __init__(self, app: Any, service: Any, settings: Any, path: str = "/docs.json") -> None:
        self.app = app
        self.service = service
        self.path = path
        self.keyed, self.protect_all = bool(settings.api_key()), settings.protect_all
        self._body: bytes | None = None

    def _render(self, svc: Any) -> bytes:
        if self._body is None:
            base = self.service.openapi_spec.asdict()
            self._body = json.dumps(document(base, svc, self.keyed, self.protect_all)).encode()
            log.info("OpenAPI document built (%d bytes)", len(self._body))
        return self._body

    async def __call__(self, scope, receive, send) -> None:
        svc = STATE.service
        if (
            svc is None
            or scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or scope["path"] != self.path
        ):
            await self.app(scope, receive, send)
            return
        body = self._render(svc)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
