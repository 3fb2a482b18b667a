"""The typed file contracts between stages: checkpoint.json (training -> export) and manifest.json
(export -> service and batch jobs), each with a `format` version, read and written only here.

    python -m nnship.contracts [--check]   # (re)write docs/schemas/*.schema.json from the models
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nnship.errors import NnshipError
from nnship.io import atomic_write, atomic_write_json, read_record

CHECKPOINT_FORMAT = "nnship.checkpoint/1"
PACKAGE_FORMAT = "nnship.package/1"
CHECKPOINT = "checkpoint.json"
MANIFEST = "manifest.json"
SCHEMAS = Path("docs/schemas")  # in the repository, where `make schemas` runs

Number = StrictFloat  # a JSON number (an integer too); true/false never count as one
Dim = Annotated[StrictInt, Field(gt=0)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
Task = Literal["classification", "regression"]
Objective = Literal["latency", "throughput", "balanced"]
M = TypeVar("M", bound=BaseModel)


class Record(BaseModel):
    """A contract object: strict types; fields other stages do not read may be added freely."""

    model_config = ConfigDict(strict=True, extra="allow")


class Quantiles(Record):
    """Training-split quantiles of one feature (q50 is the example value a client is shown)."""

    q01: Number | None = None
    q05: Number | None = None
    q25: Number | None = None
    q50: Number
    q75: Number | None = None
    q95: Number | None = None
    q99: Number | None = None


class FeatureStats(Record):
    """One feature's range and spread on the training split."""

    name: StrictStr | None = None
    min: Number
    max: Number
    mean: Number
    std: Number
    quantiles: Quantiles


class InputSpec(Record):
    """What one row is: its shape (without the batch axis), feature names and their statistics."""

    name: StrictStr = "input"
    shape: Annotated[list[Dim], Field(min_length=1)]
    dtype: StrictStr = "float32"
    layout: StrictStr | None = None
    feature_names: Annotated[list[StrictStr], Field(min_length=1)]
    stats: list[FeatureStats]

    @field_validator("stats")
    @classmethod
    def _one_per_feature(
        cls, stats: list[FeatureStats], info: ValidationInfo
    ) -> list[FeatureStats]:
        names = info.data.get("feature_names")
        if names is not None and len(stats) != len(names):
            raise ValueError(f"{len(stats)} entries for {len(names)} features")
        return stats


class OutputSpec(Record):
    """What the model answers: the task and, for classification, the class labels in output order."""

    name: StrictStr = "output"
    task: Task
    labels: list[StrictStr]
    shape: list[Dim] | None = None


class Architecture(Record):
    """How to rebuild the network: family name, its config, and the preprocessing layers."""

    name: StrictStr
    config: dict[str, Any]
    input_shape: list[Dim]
    num_outputs: Dim
    task: Task
    preprocess: dict[str, Any]


class FileRef(Record):
    """A file of the run directory and the sha256 it must have."""

    file: StrictStr
    sha256: Sha256

    @field_validator("file")
    @classmethod
    def _plain(cls, file: str) -> str:
        return plain_file_name(file)


class HeldOut(FileRef):
    """The rows export needs, stored in the run: the test split (or a seeded sample of it) for the
    parity gate and metrics, and a training-split sample for int8 calibration."""

    test_rows: Annotated[StrictInt, Field(ge=1)]
    test_total: Annotated[StrictInt, Field(ge=1)]
    calibration_rows: Annotated[StrictInt, Field(ge=1)]


class DatasetInfo(Record):
    """Where the data came from and its fingerprint; the split sizes."""

    name: StrictStr
    source: StrictStr
    sha256: Sha256
    rows: dict[str, StrictInt]


class Checkpoint(Record):
    """checkpoint.json: the trained network, its input/output spec and where its data came from."""

    format: Literal["nnship.checkpoint/1"] = CHECKPOINT_FORMAT
    architecture: Architecture
    input: InputSpec
    output: OutputSpec
    seed: StrictInt | None = None
    dataset: DatasetInfo
    training: dict[str, Any] = {}
    versions: dict[str, StrictStr] = {}
    created: StrictStr | None = None
    weights: FileRef
    heldout: HeldOut | None = None  # absent in runs written before runs held their test rows


class Speed(Record):
    """Batch-1 latency and batched throughput, measured the same way for every runner."""

    p50_ms: Number
    p99_ms: Number
    throughput_rps: Number
    batch: StrictInt


class Reference(Record):
    """PyTorch eager on the same rows: the figures every variant is compared with."""

    test_metric: Number
    speed: Speed


class OutputDiff(Record):
    """The largest difference from PyTorch on the test split, in what a client reads: class
    probabilities for classification, the raw output for regression."""

    on: Literal["probabilities", "raw outputs"]
    max_abs: Number
    rows: Annotated[StrictInt, Field(ge=1)]


class Variant(Record):
    """One optimized ONNX file of a package, with its parity, metric and speed figures."""

    file: StrictStr
    shipped: StrictBool
    providers: list[StrictStr] = []
    sha256: Sha256 | None = None
    size_bytes: StrictInt | None = None
    reason: StrictStr | None = None
    parity: dict[str, Any] | None = None
    test_metric: Number | None = None
    metrics: dict[str, Number] | None = None
    agreement_with_pytorch: Number | None = None
    speed: Speed | None = None
    metric_delta: Number | None = None
    within_budget: StrictBool | None = None
    output_diff: OutputDiff | None = None
    batch_coupled_ops: list[StrictStr] | None = None  # the service runs these one request per call

    @field_validator("file")
    @classmethod
    def _plain(cls, file: str) -> str:
        return plain_file_name(file)

    @model_validator(mode="after")
    def _hashed_when_shipped(self) -> Variant:
        if self.shipped and self.sha256 is None:
            raise ValueError("sha256: missing for a shipped variant")
        return self


class Candidate(Record):
    """One variant's figures in the choice of the default, and why it lost (None for the winner)."""

    metric: Number | None = None
    p50_ms: Number | None = None  # batch-1 latency
    batched_rps: Number | None = None  # rows/s at the measured batch size
    served_rps: Number | None = None  # rows/s as the service runs the variant
    served_as: Literal["batched", "per-request"] | None = None
    lost: StrictStr | None = None


class DefaultChoice(Record):
    """How the default variant was chosen: the objective, its rule and every variant's figures."""

    objective: Objective
    rule: StrictStr
    provider: StrictStr
    batch: Annotated[StrictInt, Field(ge=1)]  # batch size of the batched throughput figures
    chosen: StrictStr
    candidates: dict[str, Candidate]


class Exporter(Record):
    """How the ONNX graph was produced; `dynamic_axes` says whether it takes any sequence length."""

    exporter: StrictStr | None = None
    opset: StrictInt | None = None
    dynamic_axes: list[StrictStr] = ["batch"]


class Manifest(Record):
    """manifest.json: a model package's input/output spec and its variants, one chosen by default."""

    format: Literal["nnship.package/1"] = PACKAGE_FORMAT
    model: StrictStr
    version: StrictStr | None
    created: StrictStr | None = None
    task: Task
    family: StrictStr | None = None
    dataset: StrictStr | None = None
    input: InputSpec
    output: OutputSpec
    architecture: dict[str, Any] | None = None
    checkpoint_sha256: Sha256 | None = None
    exporter: Exporter = Exporter()
    metric: StrictStr | None = None
    accuracy_budget: Number | None = None
    measured_on: dict[str, Any] | None = None
    pytorch: Reference | None = None
    variants: dict[str, Variant]
    default_variant: StrictStr
    default_reason: StrictStr | None = None
    choice: DefaultChoice | None = None  # absent in packages written before the objective
    gpu_variant: StrictStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.task == "classification" and not self.output.labels:
            raise ValueError("output.labels: empty for a classification model")
        for key in ("default_variant", "gpu_variant"):
            name = getattr(self, key)
            if name is not None and not self.is_shipped(name):
                raise ValueError(f"{key}: {name!r} is not a shipped variant")
        if self.choice is not None and self.choice.chosen != self.default_variant:
            raise ValueError(
                f"choice.chosen: {self.choice.chosen!r} is not the default variant "
                f"{self.default_variant!r}"
            )
        return self

    def is_shipped(self, name: str) -> bool:
        """Whether the package ships a variant of this name."""
        entry = self.variants.get(name)
        return entry is not None and entry.shipped

    @property
    def shipped(self) -> list[str]:
        """The names of the shipped variants."""
        return [name for name, v in self.variants.items() if v.shipped]

    @property
    def gpu_choice(self) -> str:
        """The variant to run on a GPU: the recorded one, else the default."""
        return self.gpu_variant or self.default_variant

    @property
    def takes_sequences(self) -> bool:
        """Whether the model takes (T, F) sequences of any length (its export says so)."""
        return "sequence" in self.exporter.dynamic_axes

    @property
    def classification(self) -> bool:
        return self.task == "classification"


def plain_file_name(file: str) -> str:
    """A file name inside its folder: no path separators, never '.', '..' or empty."""
    if file in ("", ".", "..") or Path(file).name != file or "\\" in file or "\0" in file:
        raise ValueError(f"{file!r} is not a plain file name in the package")
    return file


FIELD_FIRST = re.compile(r"^([A-Za-z_][\w.]*): ")


def _loc(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a path: input.stats[2].std (line breaks shown escaped)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text.replace("\r", "\\r").replace("\n", "\\n")


def first_problem(error: ValidationError) -> str:
    """The first validation error on one line: `field: problem`."""
    e = error.errors(include_url=False)[0]
    loc, msg = tuple(e["loc"]), "missing" if e["type"] == "missing" else e["msg"]
    msg = msg.removeprefix("Value error, ")
    if e["type"] == "value_error" and (named := FIELD_FIRST.match(msg)):  # "key: problem"
        loc, msg = (*loc, *named[1].split(".")), msg[named.end() :]
    where = _loc(loc)
    return " ".join((f"{where}: {msg}" if where else msg).split())


def parse(model: type[M], record: dict[str, Any], path: Path | str, what: str) -> M:
    """A record checked against its contract; refused in one line naming the file and the field."""
    try:
        return model.model_validate(record)
    except ValidationError as e:
        raise NnshipError(f"{path}: not a valid {what}: {first_problem(e)}") from e


def read_checkpoint(path: Path) -> Checkpoint:
    """checkpoint.json, refused in one line for a missing file, bad JSON or a bad field."""
    record = read_record(path, CHECKPOINT_FORMAT, "not a complete nnship run directory")
    return parse(Checkpoint, record, path, "nnship run")


def read_manifest(path: Path) -> Manifest:
    """manifest.json, refused in one line for a missing file, bad JSON or a bad field."""
    record = read_record(path, PACKAGE_FORMAT, "not an nnship model package")
    return parse(Manifest, record, path, "nnship model package")


def as_json(record: BaseModel) -> dict[str, Any]:
    """A contract object as the JSON object it was made from (unset optional fields left out)."""
    return record.model_dump(mode="json", exclude_unset=True)


def write_record(path: Path, record: BaseModel) -> Path:
    """A contract object as JSON, atomically."""
    return atomic_write_json(path, as_json(record))


def schemas() -> dict[str, str]:
    """The published JSON Schemas, by file name, as the text they are written with."""
    models: dict[str, type[BaseModel]] = {
        "checkpoint.schema.json": Checkpoint,
        "manifest.schema.json": Manifest,
    }
    out = {}
    for name, model in models.items():
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"nnship/{name}",
            **model.model_json_schema(),
        }
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def stale_schemas(folder: Path = SCHEMAS) -> list[str]:
    """The schema files under `folder` that differ from the models (or are missing)."""
    stale = []
    for name, text in schemas().items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            stale.append(name)
    return stale


def write_schemas(folder: Path = SCHEMAS) -> list[Path]:
    """Write each schema atomically; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schemas().items():
        written.append(atomic_write(folder / name, lambda p, t=text: p.write_text(t)))
    return written


SCHEMA_COMMAND = "python -m nnship.contracts"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=SCHEMA_COMMAND, description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=SCHEMAS, help="folder of the schema files")
    p.add_argument("--check", action="store_true", help="only say whether they are current")
    args = p.parse_args(argv)
    if args.check:
        stale = stale_schemas(args.out)
        for name in stale:
            print(f"{args.out / name}: stale; refresh with `{SCHEMA_COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
