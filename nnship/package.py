"""Model packages as the service and batch jobs read them: located by store tag or directory, the
manifest checked against its contract, every file verified by sha256 before use, and the variant
to run chosen. Light on purpose: no torch, no exporter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnship.contracts import MANIFEST, PACKAGE_FORMAT, Manifest, read_manifest
from nnship.errors import NnshipError
from nnship.io import holds_record, verify_file

INPUT, OUTPUT = "input", "output"  # the graph's tensor names, as the exporter writes them


def is_package(path: Path) -> bool:
    """Whether a folder holds an nnship model package (its manifest says so)."""
    return holds_record(path, MANIFEST, PACKAGE_FORMAT)


def one_line(text: str) -> str:
    """An error text on one line: line breaks and runs of blanks become single spaces."""
    return " ".join(text.split())


@dataclass
class Package:
    """A model package on disk whose every file has been verified against the manifest."""

    path: Path
    manifest: Manifest

    @property
    def tag(self) -> str:
        return f"{self.manifest.model}:{self.manifest.version}"

    def variant_path(self, name: str) -> Path:
        """The ONNX file of a shipped variant; any other name is refused, listing the shipped ones."""
        if not self.manifest.is_shipped(name):
            shipped = ", ".join(self.manifest.shipped)
            raise NnshipError(f"{self.tag}: no shipped variant {name!r}; shipped: {shipped}")
        return self.path / self.manifest.variants[name].file

    def choose_variant(self, requested: str, gpu: bool) -> str:
        """`auto`: the GPU variant where a GPU runs it, else the default; a name must be shipped."""
        if requested == "auto":
            return self.manifest.gpu_choice if gpu else self.manifest.default_variant
        self.variant_path(requested)
        return requested


def graph_mismatch(
    manifest: Manifest, inputs: dict[str, list[Any]], outputs: dict[str, list[Any]]
) -> str | None:
    """How the manifest disagrees with the ONNX graph's `input` and `output` shapes (names to
    dims; a str, None or negative dim is dynamic and fits anything), or None when it agrees."""
    if INPUT not in inputs or OUTPUT not in outputs:
        return f"the graph takes {sorted(inputs)} and gives {sorted(outputs)}, not input/output"
    shape, graph_in = manifest.input.shape, inputs[INPUT]
    if len(graph_in) != 1 + len(shape) or not all(map(_fits, shape, graph_in[1:])):
        return (
            f"input.shape {shape} (rows [batch, *shape]) does not fit the graph's input {graph_in}"
        )
    labels, graph_out = manifest.output.labels, outputs[OUTPUT]
    classes = manifest.classification
    width = len(labels) if classes else 1
    if len(graph_out) != 2 or not _fits(width, graph_out[1]):
        wanted = f"{width} output.labels" if classes else "a regression"
        return f"{wanted} need output [batch, {width}]; the graph gives {graph_out}"
    return None


def _fits(declared: int, dim: Any) -> bool:
    """A manifest dimension against a graph one: fixed graph dims must match, dynamic ones fit."""
    return not isinstance(dim, int) or dim < 0 or dim == declared


def stored_model(ref: str) -> Any:
    """A model of BentoML's store by tag (`latest` or no version: the newest); any failure of the
    lookup is refused in one line, a missing model with the nnship models the store does hold."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        tag = bentoml.Tag.from_taglike(ref)
    except Exception as e:  # ValueError, or BentoMLException for more than one ':'
        raise NnshipError(f"invalid model tag {ref!r}: {one_line(str(e))}") from e
    try:
        return bentoml.models.get(tag)
    except NotFound as e:
        from nnship.store import available

        raise NnshipError(f"model {ref} is not in the BentoML model store; {available()}") from e
    except Exception as e:  # a corrupt or missing model.yaml, an unreadable store folder, ...
        problem = one_line(f"{type(e).__name__}: {e}")
        raise NnshipError(f"model {ref}: the BentoML model store cannot read it: {problem}") from e


def _store_path(ref: str) -> Path:
    """The folder of a store model."""
    return Path(stored_model(ref).path)


def load_package(ref: str | Path, variants: list[str] | None = None) -> Package:
    """A package by store tag (MODEL[:VERSION]) or directory; refuses a bad manifest, and a tampered
    or truncated file among `variants` (default: every shipped one)."""
    path = Path(ref)
    if not path.is_dir():
        path = _store_path(str(ref))
    manifest = read_manifest(path / MANIFEST)
    for name, entry in manifest.variants.items():
        if entry.shipped and entry.sha256 and (variants is None or name in variants):
            verify_file(path / entry.file, entry.sha256)
    return Package(path, manifest)
