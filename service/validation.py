"""Strict request validation: every rejection names the field and the rule; nothing is reshaped or cast
in a way that changes a value (pydantic strict mode, not BentoML's converting numpy annotations)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from nnship.contracts import Manifest

F32_MAX = float(np.finfo(np.float32).max)
# a request's bytes per value (a 39-digit integer, or a float64 repr, with separator and the
# indentation of pretty-printed JSON) and for everything else in it: a larger body cannot be a valid
# request for the model, and is refused before it is parsed (json.loads takes ~40 ms per MiB)
BYTES_PER_VALUE = 64
BODY_OVERHEAD = 64 << 10
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# a CSV value: a decimal number as JSON writes it, with optional sign and surrounding blanks
CSV_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
CSV_NON_FINITE = re.compile(r"\s*[+-]?(?:nan|inf|infinity)\s*", re.IGNORECASE)
MAX_NAMES = 5  # client-given names quoted in one message
# orjson reads an integer past 64 bits as a float, where json keeps it whole (and validation then
# names it an overflow): a body holding 19 digits in a row is read by json alone
LONG_DIGITS = re.compile(rb"\d{19}")

# closed set of rejection reasons (metric label values)
REASONS = (
    "malformed",
    "shape",
    "type",
    "non_finite",
    "overflow",
    "empty",
    "too_many_rows",
    "sequence_length",
    "out_of_range",
    "non_finite_output",
    "body_too_large",
    "content_type",
    "unauthorized",
    "rate_limited",
    "auth_limited",
    "bad_path",
    "websocket",
    "concurrency_limited",
    "unknown_model",
    "unsupported",
)


class RequestError(Exception):
    """A rejected request: HTTP status, closed-set reason, the field path and the rule broken."""

    def __init__(self, *, status: int, reason: str, loc: list[Any], rule: str, message: str):
        assert reason in REASONS, reason
        message = printable(message)
        loc = [printable(p) if isinstance(p, str) else p for p in loc]  # keys come from the client
        super().__init__(message)
        self.status, self.reason, self.loc, self.rule, self.message = (
            status,
            reason,
            loc,
            rule,
            message,
        )

    def body(self) -> dict[str, Any]:
        field = "".join(
            f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p)
            for i, p in enumerate(self.loc)
        )
        return {
            "error": f"{field}: {self.message}" if field else self.message,
            "detail": [{"loc": self.loc, "type": self.rule, "msg": self.message}],
        }


def printable(text: str, limit: int | None = None) -> str:
    """Client text safe to echo: a lone surrogate (legal as a JSON escape, not encodable as UTF-8)
    becomes its backslash escape instead of breaking the response; cut to `limit` characters + "…"."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_json(raw: bytes, **options: Any) -> Any:
    """A request body as JSON in UTF-8 (RFC 8259: no byte-order mark, no UTF-16/32); anything refused
    is a 400 that says why."""
    try:
        return json.loads(raw.decode("utf-8"), **options)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, over-long ints, deep nesting
        raise RequestError(
            status=400,
            reason="malformed",
            loc=[],
            rule="json",
            message=f"the body is not valid UTF-8 JSON: {e}",
        ) from None


class Validator:
    """Built once from the package manifest: the exact nested type a request must have."""

    def __init__(
        self,
        manifest: Manifest,
        max_rows: int,
        max_seq_len: int = 0,
        strict_range: bool = False,
        range_margin: float = 0.1,
    ):
        spec = manifest.input
        self.shape = tuple(spec.shape)
        self.sequence = manifest.takes_sequences
        self.max_rows = max_rows
        self.max_seq = max_seq_len or 4 * self.shape[0] if self.sequence else 0
        self.strict_range = strict_range
        classification = manifest.classification
        self.outputs = ("output", "probabilities") if classification else ("output",)
        self.feature_names = spec.feature_names
        # records keyed by feature name (and CSV): tabular models with one unique name per value
        self.named = (
            len(self.shape) == 1
            and not self.sequence
            and len(set(self.feature_names)) == len(self.feature_names) == self.shape[0]
        )
        self.name_set = frozenset(self.feature_names) if self.named else frozenset()
        lo = np.array([s.min for s in spec.stats])
        hi = np.array([s.max for s in spec.stats])
        pad = range_margin * np.maximum(hi - lo, 1e-12)
        self.low, self.high = lo - pad, hi + pad
        inner: Any = Number
        for axis, dim in reversed(list(enumerate(self.shape))):
            if self.sequence and axis == 0:
                inner = Annotated[list[inner], Field(min_length=1, max_length=self.max_seq)]
            else:
                inner = Annotated[list[inner], Field(min_length=dim, max_length=dim)]
        self.rows = TypeAdapter(Annotated[list[inner], Field(min_length=1, max_length=max_rows)])
        self.flat = TypeAdapter(list[Number])
        rows = max_rows * (self.max_seq if self.sequence else 1)
        values = rows * math.prod(self.shape[1:] if self.sequence else self.shape)
        # records repeat every feature name in every row (at most 6 bytes per character, escaped)
        names = sum(len(json.dumps(n)) + 2 for n in self.feature_names) if self.named else 0
        self.max_body = BODY_OVERHEAD + BYTES_PER_VALUE * values + max_rows * names

    def parse(self, raw: bytes, **options: Any) -> Any:
        """A request body as JSON, refused unparsed when it is larger than any valid request."""
        self._check_size(raw)
        return parse_json(raw, **options)

    def _parse_fast(self, raw: bytes) -> tuple[Any, bool]:
        """`parse`, through orjson where it reads the same values as json (about 4x faster on a
        digits row: 3.5 vs 13 µs); json for what orjson refuses or reads differently (NaN and
        Infinity literals, lone surrogates, numbers past float64 or 64-bit integers), so every
        body gets the answer and the refusal `parse` gives it. Also whether orjson read it (then
        it holds no NaN or infinity)."""
        self._check_size(raw)
        if LONG_DIGITS.search(raw) is None:
            try:
                return orjson.loads(raw), True
            except orjson.JSONDecodeError:
                pass
        return parse_json(raw), False

    def _check_size(self, raw: bytes) -> None:
        """413 for a body larger than any valid request for this model."""
        if len(raw) > self.max_body:
            raise RequestError(
                status=413,
                reason="body_too_large",
                loc=[],
                rule="model_body_limit",
                message=f"a {len(raw)}-byte body is larger than any valid request for this model "
                f"(at most {self.max_body} bytes: {BYTES_PER_VALUE} per value"
                + (", the feature names of each record" if self.named else "")
                + f" plus {BODY_OVERHEAD // 1024} KiB)",
            )

    # -- errors ----------------------------------------------------------------------------------
    def _from_pydantic(self, e: ValidationError, field: str) -> RequestError:
        err = e.errors(include_url=False)[0]
        kind, loc = err["type"], list(err["loc"])
        depth = len(loc)  # 0: the row list, 1: a row, ...
        value = err.get("input")
        if kind in ("float_type", "float_parsing") and type(value) is int:
            # an integer too large for a double (JSON allows any number of digits)
            reason, rule = "overflow", "float32_range"
            msg = f"an integer of {len(str(abs(value)))} digits overflows float32"
        elif kind in ("float_type", "float_parsing"):
            reason, rule = "type", "number_required"
            msg = f"expected a number, got {type(value).__name__}"
            if isinstance(value, bool):
                msg = "booleans are not numbers here"
        elif kind == "finite_number":
            reason, rule, msg = (
                "non_finite",
                "finite_required",
                "NaN and ±Infinity are not accepted",
            )
        elif kind in ("too_short", "too_long") and depth == 0:
            if kind == "too_short":
                reason, rule, msg = "empty", "non_empty_batch", "the batch has no rows"
            else:
                reason, rule = "too_many_rows", "max_rows"
                msg = f"{err['ctx']['actual_length']} rows exceed the limit of {self.max_rows}"
        elif kind in ("too_short", "too_long") and self.sequence and depth == 1:
            reason, rule = "sequence_length", "sequence_length"
            msg = f"sequence length {err['ctx']['actual_length']} is outside [1, {self.max_seq}]"
        elif kind in ("too_short", "too_long"):
            reason, rule = "shape", "shape"
            msg = f"axis {depth} has length {err['ctx']['actual_length']}, expected {self.shape[depth - 1]}"
        elif kind == "list_type" and depth == 1 and isinstance(value, dict):
            return self._record_refusal(loc[0], first_is_record=False)
        elif kind == "list_type":
            reason, rule = "shape", "rank"
            msg = f"expected a list at depth {depth} (inputs are [N, {', '.join(map(str, self.shape))}])"
        else:
            reason, rule, msg = "malformed", kind, err["msg"]
        return RequestError(status=400, reason=reason, loc=[field, *loc], rule=rule, message=msg)

    def _finish(self, x: np.ndarray, field: str, by_name: bool = False) -> np.ndarray:
        """float64 values -> float32, refusing the first one past float32's range (`by_name`: the
        loc names the feature instead of its position)."""
        big = np.abs(x) > F32_MAX
        if big.any():
            where: list[Any] = [int(i) for i in np.argwhere(big)[0]]
            value = x[tuple(where)]
            if by_name:
                where[-1] = self.feature_names[where[-1]]
            raise RequestError(
                status=400,
                reason="overflow",
                loc=[field, *where],
                rule="float32_range",
                message=f"{value:.4g} overflows float32",
            )
        return x.astype(np.float32)

    # -- the two request formats -----------------------------------------------------------------------
    def predict_body(self, raw: bytes) -> np.ndarray:
        """A whole /predict body: a JSON object holding `inputs` and nothing else."""
        return self.predict_request(raw)[0]

    def predict_request(self, raw: bytes, csv_body: bool = False) -> tuple[np.ndarray, bool]:
        """A whole /predict body (JSON, or CSV when `csv_body`) -> (float32 array, whether it held
        positional rows in JSON, the form BentoML's route takes)."""
        if csv_body:
            return self.predict_csv(raw), False
        body, plain = self._parse_fast(raw)
        if not isinstance(body, dict):
            raise RequestError(
                status=400,
                reason="malformed",
                loc=[],
                rule="object_required",
                message='the request body must be a JSON object: {"inputs": [...]}',
            )
        if "inputs" not in body:
            raise RequestError(
                status=400,
                reason="malformed",
                loc=["inputs"],
                rule="missing",
                message="the field is required",
            )
        extra = sorted(k for k in body if k != "inputs")
        if extra:  # a misspelt option must not be ignored silently
            raise RequestError(
                status=400,
                reason="malformed",
                loc=[extra[0]],
                rule="unknown_field",
                message="unknown field; the body holds only `inputs`",
            )
        inputs = body["inputs"]
        if plain and b"true" not in raw and b"false" not in raw:  # orjson's, and no booleans
            x = self._plain_rows(inputs)
            if x is not None:
                return x, True
        return self.predict_inputs(inputs), not _records(inputs)

    def _plain_rows(self, value: Any) -> np.ndarray | None:
        """The rows as predict_inputs reads them when they are plainly valid, without pydantic:
        numpy takes nested lists of numbers to an int64 or float64 array of their shape (strings,
        nulls, objects, ragged or over-long rows give another dtype, shape or an error: None, and
        the strict path decides). Booleans, which numpy would turn into numbers, are ruled out by
        the caller; NaN and infinities never come out of orjson. ~5 µs less a digits row."""
        if self.sequence or type(value) is not list:
            return None
        try:
            x = np.array(value)
        except (ValueError, TypeError, OverflowError):
            return None
        if x.dtype not in (np.float64, np.int64) or x.shape[1:] != self.shape:
            return None
        if not 1 <= len(x) <= self.max_rows:
            return None
        return self._finish(x.astype(np.float64, copy=False), "inputs")

    def predict_inputs(self, value: Any) -> np.ndarray:
        """`{"inputs": [[...], ...]}` shaped [N, *input_shape], or records keyed by feature name
        (tabular models) -> float32 array."""
        if _records(value):
            return self._predict_records(value)
        try:
            rows = self.rows.validate_python(value)
        except ValidationError as e:
            raise self._from_pydantic(e, "inputs") from None
        if self.sequence:
            lengths = {len(r) for r in rows}
            if len(lengths) > 1:
                raise RequestError(
                    status=400,
                    reason="sequence_length",
                    loc=["inputs"],
                    rule="equal_lengths",
                    message=f"rows have different sequence lengths {sorted(lengths)}; one request holds "
                    "sequences of one length",
                )
        return self._finish(np.asarray(rows, dtype=np.float64), "inputs")

    # -- records keyed by feature name, and CSV --------------------------------------------------------
    def _predict_records(self, rows: list[Any]) -> np.ndarray:
        """`[{"name": value, ...}, ...]`: every feature once, no other name; values under the rules
        of positional rows, their loc naming the row and the feature."""
        if not self.named:
            raise self._record_refusal(0, first_is_record=True)
        if len(rows) > self.max_rows:
            raise RequestError(
                status=400,
                reason="too_many_rows",
                loc=["inputs"],
                rule="max_rows",
                message=f"{len(rows)} rows exceed the limit of {self.max_rows}",
            )
        names, expected = self.feature_names, self.name_set
        values = []
        for i, row in enumerate(rows):
            if type(row) is not dict:
                raise self._record_refusal(i, first_is_record=True)
            if row.keys() != expected:
                raise self._names_refusal(list(row), ["inputs", i], "feature")
            values.append([row[n] for n in names])
        try:
            checked = self.rows.validate_python(values)
        except ValidationError as e:
            err = self._from_pydantic(e, "inputs")
            if len(err.loc) > 2 and isinstance(err.loc[2], int):
                err.loc[2] = names[err.loc[2]]
            raise err from None
        return self._finish(np.asarray(checked, dtype=np.float64), "inputs", by_name=True)

    def _record_refusal(self, row: int, first_is_record: bool) -> RequestError:
        """A record where this model takes only positional rows, or rows of both kinds."""
        if not self.named:
            message = (
                f"this model takes positional arrays shaped [N, {', '.join(map(str, self.shape))}]; "
                "records keyed by feature name are accepted for tabular models only"
            )
            return RequestError(
                status=400,
                reason="shape",
                loc=["inputs", row],
                rule="positional_required",
                message=message,
            )
        kinds = (
            ("a positional row", "a record")
            if first_is_record
            else ("a record", "a positional list")
        )
        return RequestError(
            status=400,
            reason="shape",
            loc=["inputs", row],
            rule="one_row_form",
            message=f"row {row} is {kinds[0]} but row 0 is {kinds[1]}: all rows of a request are "
            "either positional lists or records keyed by feature name",
        )

    def _names_refusal(self, given: list[Any], loc: list[Any], noun: str) -> RequestError:
        """Names that are not the model's features, or features left out (unknown ones first)."""
        unknown = [n for n in given if n not in self.name_set]
        present = set(given)
        missing = [n for n in self.feature_names if n not in present]
        parts = []
        if unknown:
            parts.append(f"unknown {noun} name(s) {_names(unknown)}")
        if missing:
            parts.append(f"missing feature(s) {_names(missing)}")
        return RequestError(
            status=400,
            reason="shape",
            loc=loc,
            rule="unknown_features" if unknown else "missing_features",
            message="; ".join(parts) + f"; every one of the model's {len(self.feature_names)} "
            f"features is required ({_names(self.feature_names)}), no other name",
        )

    def predict_csv(self, raw: bytes) -> np.ndarray:
        """A text/csv body: a header row of feature names (any order), then one row per line (blank
        lines skipped); row numbers in refusals count data lines from 1."""
        self._check_size(raw)
        if not self.named:
            raise RequestError(
                status=400,
                reason="shape",
                loc=[],
                rule="positional_required",
                message="CSV bodies are accepted for tabular models only; this model takes "
                f"positional JSON arrays shaped [N, {', '.join(map(str, self.shape))}]",
            )
        try:
            text = raw.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not a name
        except UnicodeDecodeError as e:
            raise _csv_refusal([], f"the body is not valid UTF-8: {e}") from None
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next((r for r in reader if r), None)
            if header is None:
                raise RequestError(
                    status=400,
                    reason="empty",
                    loc=[],
                    rule="csv_header",
                    message="the CSV body is empty; it needs a header row of feature names, then "
                    "one row per line",
                )
            rows = self._csv_rows(reader, header)
        except csv.Error as e:
            raise _csv_refusal([], f"line {reader.line_num}: {e}") from None
        return rows

    def _csv_rows(self, reader: Any, header: list[str]) -> np.ndarray:
        """The data rows under `header`, as float32 in the model's feature order."""
        if len(set(header)) != len(header):
            seen: set[str] = set()
            twice = [n for n in header if n in seen or seen.add(n)]
            raise RequestError(
                status=400,
                reason="shape",
                loc=["header"],
                rule="duplicate_column",
                message=f"column(s) {_names(twice)} appear more than once in the header",
            )
        if set(header) != self.name_set:
            raise self._names_refusal(header, ["header"], "column")
        width = len(header)
        rows: list[list[str]] = []
        for row in reader:
            if not row:
                continue
            if len(rows) == self.max_rows:
                raise RequestError(
                    status=400,
                    reason="too_many_rows",
                    loc=["row", len(rows) + 1],
                    rule="max_rows",
                    message=f"more than {self.max_rows} rows (the limit)",
                )
            if len(row) != width:
                raise RequestError(
                    status=400,
                    reason="shape",
                    loc=["row", len(rows) + 1],
                    rule="csv_columns",
                    message=f"{len(row)} values for the header's {width} columns",
                )
            rows.append(row)
        if not rows:
            raise RequestError(
                status=400,
                reason="empty",
                loc=[],
                rule="non_empty_batch",
                message="the batch has no rows: the CSV body holds only its header",
            )
        x = np.empty((len(rows), width), dtype=np.float64)
        for r, row in enumerate(rows):
            if not all(map(CSV_NUMBER.fullmatch, row)):
                j = next(j for j, v in enumerate(row) if not CSV_NUMBER.fullmatch(v))
                raise _csv_value_refusal(r + 1, header[j], row[j])
            x[r] = [float(v) for v in row]
        column = {n: j for j, n in enumerate(header)}
        x = x[:, [column[n] for n in self.feature_names]]
        bad = ~np.isfinite(x) | (np.abs(x) > F32_MAX)  # not finite: too large for a double
        if bad.any():
            r, j = (int(i) for i in np.argwhere(bad)[0])
            name = self.feature_names[j]
            raise RequestError(
                status=400,
                reason="overflow",
                loc=["row", r + 1, name],
                rule="float32_range",
                message=f"{_short(rows[r][column[name]].strip())} overflows float32",
            )
        return x.astype(np.float32)

    def v2_body(
        self, raw: bytes, header_length: str | None, **options: Any
    ) -> tuple[Any, memoryview]:
        """A v2 body -> (its JSON header, the binary tensor bytes after it).

        With the binary tensor data extension, `Inference-Header-Content-Length` says how many of the
        leading bytes are the JSON header; without it the whole body is JSON. The body is refused by
        its size first, and only the header is decoded."""
        self._check_size(raw)
        if header_length is None:
            return parse_json(raw, **options), memoryview(b"")
        n = _header_length(header_length, len(raw))
        return parse_json(raw[:n], **options), memoryview(raw)[n:]

    def v2_inputs(
        self, body: Any, binary: bytes | memoryview = b""
    ) -> tuple[np.ndarray, list[tuple[str, bool]]]:
        """An Open Inference Protocol v2 request -> (float32 array, [(output name, as binary), ...]).

        Cheap checks come first (the request's structure, the tensor's name, datatype, parameters
        and shape, the requested outputs, then the element count of `data` against the shape,
        counted without copying, or the binary sizes against the shape and the body), so a bad
        request is refused after work bounded by the largest valid request, not by its body."""
        request = self._v2_request(body)
        t = request.inputs[0]
        outputs = self._outputs(request)
        size = (t.parameters or {}).get("binary_data_size")
        if size is None and binary:
            raise _binary_error(
                "binary_size_matches_body",
                f"{len(binary)} bytes follow the JSON header but no input declares binary_data_size",
                [],
            )
        if size is None:
            return self._json_tensor(t), outputs
        return self._binary_tensor(t, size, binary), outputs

    def _json_tensor(self, t: V2Tensor) -> np.ndarray:
        """`data` -> float32 array: numbers flat or nested as the shape are read in one numpy call;
        anything else takes the strict walk, which refuses it (or reads it) by the same rules."""
        values = _plain_numbers(t.data, t.shape)
        if values is None:
            flat = _flatten(t.data, math.prod(t.shape), t.shape)
            try:
                checked = self.flat.validate_python(flat)
            except ValidationError as e:
                err = self._from_pydantic(e, "data")
                err.loc = ["inputs", 0, "data", *err.loc[1:]]
                raise err from None
            values = np.asarray(checked, dtype=np.float64)
        return self._finish(values, "data").reshape(t.shape)

    @staticmethod
    def _binary_tensor(t: V2Tensor, size: int, binary: bytes | memoryview) -> np.ndarray:
        """The tensor's FP32 little-endian row-major bytes, after its sizes are checked."""
        if t.data is not None:
            raise _binary_error(
                "binary_or_json_data",
                "a tensor sends its values either in `data` or as binary_data_size bytes, not both",
                ["inputs", 0],
            )
        want = math.prod(t.shape) * 4
        if size != want:
            raise _binary_error(
                "binary_size_matches_shape",
                f"binary_data_size {size} != {want} bytes (shape {t.shape} of FP32)",
                ["inputs", 0, "parameters", "binary_data_size"],
            )
        if len(binary) != size:
            raise _binary_error(
                "binary_size_matches_body",
                f"{len(binary)} bytes follow the JSON header; the inputs declare {size}",
                [],
            )
        x = np.frombuffer(binary, dtype="<f4").reshape(t.shape)
        finite = np.isfinite(x)
        if not finite.all():
            where = [int(i) for i in np.argwhere(~finite)[0]]
            raise RequestError(
                status=400,
                reason="non_finite",
                loc=["inputs", 0, "data", *where],
                rule="finite_required",
                message="NaN and ±Infinity are not accepted",
            )
        return x.astype(np.float32)  # native order, aligned, writable

    def _v2_request(self, body: Any) -> V2Request:
        """The request's structure, its tensor's header and shape, checked by the model in that
        order; the first problem found is the one refused."""
        try:
            return V2Request.model_validate(body, context={"shape": self._check_shape})
        except ValidationError as e:
            raise _v2_refusal(e.errors(include_url=False)[0]) from None

    def _outputs(self, request: V2Request) -> list[tuple[str, bool]]:
        """The outputs to answer, each with whether it goes as binary data: those requested (their
        `binary_data` parameter), else every output (the request's `binary_data_output`)."""
        default = (request.parameters or {}).get("binary_data_output", False)
        if not isinstance(default, bool):
            raise RequestError(
                status=400,
                reason="type",
                loc=["parameters", "binary_data_output"],
                rule="bool_required",
                message="binary_data_output must be true or false",
            )
        if not request.outputs:
            return [(name, default) for name in self.outputs]
        names = self._output_names(request.outputs)
        return [
            (name, _output_binary(o.get("parameters"), i))
            for i, (name, o) in enumerate(zip(names, request.outputs, strict=True))
        ]

    def _output_names(self, outputs: list[Any]) -> list[str]:
        """The requested outputs, each known output at most once: an answer holds at most max_rows
        rows of each output, and a longer list is refused by its first repeated or unknown name
        (after at most one more item than the model has outputs)."""
        loc = ["outputs"]
        names: list[str] = []
        for i, o in enumerate(outputs):
            if not isinstance(o, dict):
                raise RequestError(
                    status=400,
                    reason="malformed",
                    loc=[*loc, i],
                    rule="object_required",
                    message="an output must be an object",
                )
            name = o.get("name")
            if name in names:
                raise RequestError(
                    status=400,
                    reason="malformed",
                    loc=[*loc, i, "name"],
                    rule="duplicate_output",
                    message=f"output {name!r} is requested more than once",
                )
            if name not in self.outputs:
                raise RequestError(
                    status=400,
                    reason="malformed",
                    loc=[*loc, i, "name"],
                    rule="output_name",
                    message=f"unknown output {_short(name)}; available: {list(self.outputs)}",
                )
            names.append(name)
        return names

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        loc = ["inputs", 0, "shape"]
        if len(shape) != len(self.shape) + 1:
            raise RequestError(
                status=400,
                reason="shape",
                loc=loc,
                rule="rank",
                message=f"rank {len(shape)} != {len(self.shape) + 1} (expected [N, {', '.join(map(str, self.shape))}])",
            )
        n, rest = shape[0], shape[1:]
        if n < 1:
            raise RequestError(
                status=400,
                reason="empty",
                loc=loc,
                rule="non_empty_batch",
                message="the batch has no rows",
            )
        if n > self.max_rows:
            raise RequestError(
                status=400,
                reason="too_many_rows",
                loc=loc,
                rule="max_rows",
                message=f"{n} rows exceed the limit of {self.max_rows}",
            )
        for axis, (got, want) in enumerate(zip(rest, self.shape, strict=True), start=1):
            if self.sequence and axis == 1:
                if not 1 <= got <= self.max_seq:
                    raise RequestError(
                        status=400,
                        reason="sequence_length",
                        loc=loc,
                        rule="sequence_length",
                        message=f"sequence length {got} is outside [1, {self.max_seq}]",
                    )
            elif got != want:
                raise RequestError(
                    status=400,
                    reason="shape",
                    loc=loc,
                    rule="shape",
                    message=f"axis {axis} has length {got}, expected {want}",
                )

    # -- training range ------------------------------------------------------------------------------
    def outside(self, x: np.ndarray) -> np.ndarray:
        """(N, T or 1, features): which values lie outside the training range ± margin."""
        z = x.reshape(len(x), -1, x.shape[-1]) if self.sequence else x.reshape(len(x), 1, -1)
        return (z < self.low) | (z > self.high)

    def out_of_range(self, x: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
        """(one `{"row", "features"}` entry per row with a value outside the training range ± margin,
        naming its features as the manifest does: each value of a tabular row or image, each
        channel of a sequence at any step; per-feature value counts)."""
        bad = self.outside(x)  # (N, T or 1, features)
        if not bad.any():  # the usual case, in one reduction instead of four
            return [], np.zeros(bad.shape[-1], dtype=np.intp)
        per_row = bad.any(axis=1)  # (N, features), as batch jobs' out_of_range column
        rows = np.flatnonzero(per_row.any(axis=1))
        counts = bad.sum(axis=(0, 1))
        if not len(rows):
            return [], counts
        if self.strict_range:
            r = int(rows[0])
            f = int(np.flatnonzero(per_row[r])[0])
            raise RequestError(
                status=422,
                reason="out_of_range",
                loc=["inputs", r],
                rule="training_range",
                message=f"feature {self.feature_names[f]} is outside the training range "
                f"[{self.low[f]:.4g}, {self.high[f]:.4g}] (strict mode)",
            )
        names = self.feature_names
        flagged = [
            {"row": int(r), "features": [names[f] for f in np.flatnonzero(per_row[r])]}
            for r in rows
        ]
        return flagged, counts


def _records(value: Any) -> bool:
    """Whether /predict inputs come as records keyed by feature name (judged by the first row)."""
    return type(value) is list and bool(value) and type(value[0]) is dict


def _names(names: list[Any]) -> str:
    """A few names for a message, each cut short, and how many more there are."""
    shown = ", ".join(_short(n) for n in names[:MAX_NAMES])
    more = len(names) - MAX_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def _csv_refusal(loc: list[Any], message: str) -> RequestError:
    """A CSV body that cannot be read as CSV."""
    return RequestError(status=400, reason="malformed", loc=loc, rule="csv", message=message)


def _csv_value_refusal(row: int, column: str, text: str) -> RequestError:
    """A CSV value that is not a finite decimal number."""
    if CSV_NON_FINITE.fullmatch(text):
        reason, rule, message = (
            "non_finite",
            "finite_required",
            "NaN and ±Infinity are not accepted",
        )
    else:
        reason, rule = "type", "number_required"
        message = f"expected a number, got {_short(text)}"
    return RequestError(
        status=400,
        reason=reason,
        loc=["row", row, column],
        rule=rule,
        message=f"{message} (row {row} of the data, counted from 1 after the header; column "
        f"{_short(column)})",
    )


def _carried(error: RequestError) -> PydanticCustomError:
    """A refusal raised inside the v2 model, carried out as the RequestError it stands for."""
    return PydanticCustomError(
        "request_error", "{message}", {"message": error.message, "error": error}
    )


def _tensor_refusal(reason: str, rule: str, message: str, field: str) -> PydanticCustomError:
    """A refusal of one field of the input tensor."""
    loc = ["inputs", 0, field]
    return _carried(RequestError(status=400, reason=reason, loc=loc, rule=rule, message=message))


class V2Tensor(BaseModel):
    """The one input tensor, checked in field order (name, datatype, parameters, shape); `data` is
    left to the bounded walk that follows."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: Any = Field(None, validate_default=True)  # absent: refused as the wrong name
    datatype: Any = Field(None, validate_default=True)
    parameters: dict[str, Any] | None = None
    shape: list[int]
    data: Any = None

    @field_validator("name")
    @classmethod
    def _input_name(cls, value: Any) -> Any:
        """This model takes one tensor, named `input`."""
        if value != "input":
            message = f"unknown input {_short(value)}; this model takes 'input'"
            raise _tensor_refusal("malformed", "input_name", message, "name")
        return value

    @field_validator("datatype")
    @classmethod
    def _fp32(cls, value: Any) -> Any:
        """Values come as FP32."""
        if value != "FP32":
            message = f"datatype {_short(value)} is not accepted; send FP32"
            raise _tensor_refusal("type", "datatype", message, "datatype")
        return value

    @field_validator("parameters")
    @classmethod
    def _binary_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """binary_data_size, when given, is a byte count."""
        size = (value or {}).get("binary_data_size")
        if size is not None and (type(size) is not int or size < 0):
            message = f"binary_data_size {_short(size)} is not a byte count"
            raise _tensor_refusal("malformed", "binary_data_size", message, "parameters")
        return value

    @field_validator("shape")
    @classmethod
    def _model_shape(cls, value: list[int], info: ValidationInfo) -> list[int]:
        """Rank, rows and the other axes against the model's input shape."""
        try:
            info.context["shape"](tuple(value))
        except RequestError as e:
            raise _carried(e) from None
        return value


class V2Request(BaseModel):
    """An Open Inference Protocol v2 inference request (tensor data in JSON or as binary)."""

    model_config = ConfigDict(extra="allow", strict=True)

    inputs: Annotated[list[V2Tensor], Field(min_length=1, max_length=1)]
    outputs: list[Any] | None = None
    id: Any = None
    parameters: dict[str, Any] | None = None


ONE_INPUT = ("one_input", ["inputs"], "expected exactly one input tensor object")
# each structural problem by the field where the model found it: (rule, loc, message)
V2_STRUCTURE = {
    (): ("object_required", [], "the request body must be a JSON object"),
    ("inputs",): ONE_INPUT,
    ("inputs", 0): ONE_INPUT,
    ("inputs", 0, "parameters"): (
        "object_required",
        ["inputs", 0, "parameters"],
        "parameters must be a JSON object",
    ),
    ("inputs", 0, "shape"): (
        "int_list",
        ["inputs", 0, "shape"],
        "shape must be a list of integers",
    ),
    ("outputs",): ("object_list", ["outputs"], "outputs must be a list of objects"),
    ("parameters",): ("object_required", ["parameters"], "parameters must be a JSON object"),
}


def _v2_refusal(err: Any) -> RequestError:
    """The RequestError for the first problem the v2 model found."""
    if err["type"] == "request_error":
        return err["ctx"]["error"]
    loc = tuple(err["loc"])
    key = next(loc[:n] for n in range(len(loc), -1, -1) if loc[:n] in V2_STRUCTURE)
    rule, where, message = V2_STRUCTURE[key]
    return RequestError(status=400, reason="malformed", loc=where, rule=rule, message=message)


def _header_length(value: str, body: int) -> int:
    """Inference-Header-Content-Length: a byte count no larger than the body."""
    if not (value.isascii() and value.isdigit() and len(value) <= 12):
        raise _binary_error(
            "header_length",
            f"Inference-Header-Content-Length {_short(value)} is not a byte count",
            ["headers", "inference-header-content-length"],
        )
    if int(value) > body:
        raise _binary_error(
            "header_length",
            f"Inference-Header-Content-Length {int(value)} is larger than the {body}-byte body",
            ["headers", "inference-header-content-length"],
        )
    return int(value)


def _binary_error(rule: str, message: str, loc: list[Any]) -> RequestError:
    """A refusal by the binary tensor data extension's sizes."""
    return RequestError(status=400, reason="malformed", loc=loc, rule=rule, message=message)


def _output_binary(parameters: Any, i: int) -> bool:
    """A requested output's `binary_data` parameter (false when absent); options this server does
    not implement are refused, not ignored."""
    loc = ["outputs", i, "parameters"]
    if parameters is None:
        return False
    if not isinstance(parameters, dict):
        raise RequestError(
            status=400,
            reason="malformed",
            loc=loc,
            rule="object_required",
            message="parameters must be a JSON object",
        )
    if parameters.get("classification") not in (None, 0):
        raise RequestError(
            status=400,
            reason="unsupported",
            loc=[*loc, "classification"],
            rule="classification_unsupported",
            message="the classification extension is not supported; read `probabilities`",
        )
    binary = parameters.get("binary_data", False)
    if not isinstance(binary, bool):
        raise RequestError(
            status=400,
            reason="type",
            loc=[*loc, "binary_data"],
            rule="bool_required",
            message="binary_data must be true or false",
        )
    return binary


def _short(value: Any, limit: int = 40) -> str:
    """A client value for an error message, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


NUMBER_TYPES = frozenset((float, int))  # JSON numbers as json.loads gives them (not bool)


def _plain_numbers(data: Any, shape: list[int]) -> np.ndarray | None:
    """JSON `data` that is valid at a glance -> float64 array, else None: flat (as tritonclient
    sends it) or nested with as many lists at each level as the shape has (what the strict walk
    accepts, in the same row-major order), every leaf a finite float or int within double's range.
    The checks run over whole lists in C (a set of types, one numpy conversion), no Python work per
    value: 0.37 ms for 256 rows of 64 values, where the strict walk takes 1.1 ms."""
    level = data
    for axis in range(1, len(shape)):  # one level of lists per axis, as many as the axes before
        if type(level) is not list or not level or type(level[0]) is not list:
            break
        if len(level) != math.prod(shape[:axis]) or set(map(type, level)) != {list}:
            return None
        level = list(itertools.chain.from_iterable(level))
    if type(level) is not list or len(level) != math.prod(shape):
        return None
    if not NUMBER_TYPES.issuperset(map(type, level)):
        return None
    try:
        values = np.array(level, dtype=np.float64)
    except OverflowError:  # an integer past double's range: refused by the strict walk
        return None
    if not np.isfinite(values).all():  # a literal such as 1e999 reads as infinity
        return None
    return values


def _flatten(data: Any, expected: int, shape: list[int]) -> list[Any]:
    """Row-major flattening of nested lists, stopped as soon as there are more values than the shape
    holds (or more lists than a nesting of that shape can have): the work is bounded by the shape,
    never by the body. Leaves are checked by the strict number type afterwards."""
    loc = ["inputs", 0, "data"]
    if not isinstance(data, list):
        raise RequestError(
            status=400,
            reason="malformed",
            loc=loc,
            rule="list_required",
            message="data must be a list",
        )
    out: list[Any] = []
    lists = 1
    max_lists = sum(math.prod(shape[:k]) for k in range(len(shape)))  # data nested as the shape
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                lists += 1
                if lists > max_lists:
                    break
                stack.append(iter(item))
                break
            out.append(item)
            if len(out) > expected:
                break
        else:
            stack.pop()
            continue
        if len(out) > expected or lists > max_lists:
            raise RequestError(
                status=400,
                reason="shape",
                loc=loc,
                rule="size_matches_shape",
                message=f"data does not fit shape {shape}: more than {expected} values, or nested deeper",
            )
    if len(out) != expected:
        raise RequestError(
            status=400,
            reason="shape",
            loc=loc,
            rule="size_matches_shape",
            message=f"{len(out)} values do not fill shape {shape}",
        )
    return out
