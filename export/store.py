"""Model packages as the service and batch jobs read them: located by store tag or directory, every
file verified by sha256 before use. Light on purpose: no torch, no exporter."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnship.errors import NnshipError
from nnship.io import holds_record, read_record, verify_file

FORMAT = "nnship.package/1"
MANIFEST = "manifest.json"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
TASKS = ("classification", "regression")
INPUT, OUTPUT = "input", "output"  # the graph's tensor names, as the exporter writes them


def is_package(path: Path) -> bool:
    """Whether a folder holds an nnship model package (its manifest says so)."""
    return holds_record(path, MANIFEST, FORMAT)


def _field(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[key], refused unless present and of the given type (bool never counts as a number)."""
    if key not in record:
        raise ValueError(f"{where}{key} is missing")
    value, kinds = record[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ValueError(f"{where}{key} must be {names}, not {type(value).__name__}")
    return value


def _check_input(spec: dict[str, Any]) -> None:
    """input: shape (positive integers), feature_names (strings) and one stats entry per feature."""
    shape = _field(spec, "shape", list, "input.")
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError("input.shape must be a non-empty list of positive integers")
    names = _field(spec, "feature_names", list, "input.")
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError("input.feature_names must be a non-empty list of strings")
    stats = _field(spec, "stats", list, "input.")
    if len(stats) != len(names):
        raise ValueError(f"input.stats has {len(stats)} entries for {len(names)} features")
    for i, entry in enumerate(stats):
        if not isinstance(entry, dict):
            raise ValueError(f"input.stats[{i}] must be an object")
        for key in ("min", "max", "mean", "std"):
            _field(entry, key, (int, float), f"input.stats[{i}].")
        quantiles = _field(entry, "quantiles", dict, f"input.stats[{i}].")
        _field(quantiles, "q50", (int, float), f"input.stats[{i}].quantiles.")


def _check_variant(name: str, entry: Any) -> None:
    """A variant entry: a plain file name inside the package, shipped flag, sha256 when shipped."""
    if not isinstance(entry, dict):
        raise ValueError(f"variants.{name} must be an object")
    file = _field(entry, "file", str, f"variants.{name}.")
    if file in ("", ".", "..") or Path(file).name != file or "\\" in file or "\0" in file:
        raise ValueError(f"variants.{name}.file {file!r} is not a plain file name in the package")
    if _field(entry, "shipped", bool, f"variants.{name}.") and not SHA256.match(
        str(_field(entry, "sha256", str, f"variants.{name}."))
    ):
        raise ValueError(f"variants.{name}.sha256 is not a hex sha256")


def check_manifest(manifest: dict[str, Any]) -> None:
    """Raise ValueError naming the first key the service needs that is missing or mistyped."""
    _field(manifest, "model", str, "")
    _field(manifest, "version", (str, type(None)), "")
    if _field(manifest, "task", str, "") not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}")
    _check_input(_field(manifest, "input", dict, ""))
    labels = _field(_field(manifest, "output", dict, ""), "labels", list, "output.")
    if not all(isinstance(label, str) for label in labels):
        raise ValueError("output.labels must be a list of strings")
    if manifest["task"] == "classification" and not labels:
        raise ValueError("output.labels is empty for a classification model")
    variants = _field(manifest, "variants", dict, "")
    for name, entry in variants.items():
        _check_variant(name, entry)
    default = _field(manifest, "default_variant", str, "")
    if not variants.get(default, {}).get("shipped"):
        raise ValueError(f"default_variant {default!r} is not a shipped variant")
    gpu = manifest.get("gpu_variant", default)
    if not isinstance(gpu, str) or not variants.get(gpu, {}).get("shipped"):
        raise ValueError(f"gpu_variant {gpu!r} is not a shipped variant")
    if not isinstance(manifest.get("exporter", {}), dict):
        raise ValueError("exporter must be an object")


def takes_sequences(manifest: dict[str, Any]) -> bool:
    """Whether the package's model takes (T, F) sequences of any length (its export says so)."""
    return "sequence" in manifest.get("exporter", {}).get("dynamic_axes", [])


@dataclass
class Package:
    """A model package on disk whose every file has been verified against the manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def tag(self) -> str:
        return f"{self.manifest['model']}:{self.manifest['version']}"

    def variant_path(self, name: str) -> Path:
        entry = self.manifest["variants"].get(name)
        if not entry or not entry.get("shipped"):
            shipped = [v for v, e in self.manifest["variants"].items() if e.get("shipped")]
            raise NnshipError(
                f"{self.tag}: no shipped variant {name!r}; shipped: {', '.join(shipped)}"
            )
        return self.path / entry["file"]


def one_line(text: str) -> str:
    """An error text on one line: line breaks and runs of blanks become single spaces."""
    return " ".join(text.split())


def graph_mismatch(
    manifest: dict[str, Any], inputs: dict[str, list[Any]], outputs: dict[str, list[Any]]
) -> str | None:
    """How the manifest disagrees with the ONNX graph's `input` and `output` shapes (names to
    dims; a str, None or negative dim is dynamic and fits anything), or None when it agrees."""
    if INPUT not in inputs or OUTPUT not in outputs:
        return f"the graph takes {sorted(inputs)} and gives {sorted(outputs)}, not input/output"
    shape, graph_in = manifest["input"]["shape"], inputs[INPUT]
    if len(graph_in) != 1 + len(shape) or not all(map(_fits, shape, graph_in[1:])):
        return (
            f"input.shape {shape} (rows [batch, *shape]) does not fit the graph's input {graph_in}"
        )
    labels, graph_out = manifest["output"]["labels"], outputs[OUTPUT]
    classes = manifest["task"] == "classification"
    width = len(labels) if classes else 1
    if len(graph_out) != 2 or not _fits(width, graph_out[1]):
        wanted = f"{width} output.labels" if classes else "a regression"
        return f"{wanted} need output [batch, {width}]; the graph gives {graph_out}"
    return None


def _fits(declared: int, dim: Any) -> bool:
    """A manifest dimension against a graph one: fixed graph dims must match, dynamic ones fit."""
    return not isinstance(dim, int) or dim < 0 or dim == declared


def _store_path(ref: str) -> Path:
    """The folder of a store model; any failure of BentoML's lookup is refused in one line."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        tag = bentoml.Tag.from_taglike(ref)
    except Exception as e:  # ValueError, or BentoMLException for more than one ':'
        raise NnshipError(f"invalid model tag {ref!r}: {one_line(str(e))}") from e
    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound as e:
        raise NnshipError(f"model {ref} is not in the BentoML model store") from e
    except Exception as e:  # a corrupt or missing model.yaml, an unreadable store folder, ...
        problem = one_line(f"{type(e).__name__}: {e}")
        raise NnshipError(f"model {ref}: the BentoML model store cannot read it: {problem}") from e


def load_package(ref: str | Path, variants: list[str] | None = None) -> Package:
    """A package by store tag (MODEL[:VERSION]) or directory; refuses a tampered or truncated file."""
    path = Path(ref)
    if not path.is_dir():
        path = _store_path(str(ref))
    manifest = read_record(path / MANIFEST, FORMAT, "not an nnship model package")
    try:
        check_manifest(manifest)
    except ValueError as e:
        problem = str(e).replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever the keys
        raise NnshipError(f"{path / MANIFEST}: not a valid nnship model package: {problem}") from e
    for name, entry in manifest["variants"].items():
        if entry["shipped"] and (variants is None or name in variants):
            verify_file(path / entry["file"], entry["sha256"])
    return Package(path, manifest)
