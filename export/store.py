"""Model packages as the service and batch jobs read them: located by store tag or directory, every
file verified by sha256 before use. Light on purpose: no torch, no exporter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnship.errors import NnshipError
from nnship.io import read_record, verify_file

FORMAT = "nnship.package/1"
MANIFEST = "manifest.json"


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


def load_package(ref: str | Path, variants: list[str] | None = None) -> Package:
    """A package by store tag (MODEL[:VERSION]) or directory; refuses a tampered or truncated file."""
    path = Path(ref)
    if not path.is_dir():
        import bentoml
        from bentoml.exceptions import NotFound

        try:
            path = Path(bentoml.models.get(str(ref)).path)
        except NotFound as e:
            raise NnshipError(f"model {ref} is not in the BentoML model store") from e
        except ValueError as e:
            raise NnshipError(f"invalid model tag {ref!r}: {e}") from e
    manifest = read_record(path / MANIFEST, FORMAT, "not an nnship model package")
    for name, entry in manifest["variants"].items():
        if Path(entry.get("file", "")).name != entry.get("file"):
            raise NnshipError(f"{path / MANIFEST}: variant {name} names a file outside the package")
        if entry.get("shipped") and (variants is None or name in variants):
            verify_file(path / entry["file"], entry["sha256"])
    return Package(path, manifest)
