"""`nnship models list | prune`: the nnship model packages in BentoML's local model store."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nnship.contracts import MANIFEST, read_manifest
from nnship.errors import NnshipError

SHOWN_IN_ERRORS = 10  # tags an error message names before "and N more"


@dataclass
class Stored:
    """One nnship package in the store."""

    tag: str
    name: str
    created: datetime
    size_bytes: int
    default_variant: str
    model: Any  # bentoml.Model, for deletion


def packages(name: str | None = None) -> list[Stored]:
    """The store's nnship packages (of model `name`, or all), newest first; other models are left
    out (a manifest of nnship's format marks a package)."""
    import bentoml
    from bentoml.exceptions import NotFound

    from nnship.package import is_package

    try:
        stored = bentoml.models.list(name)
    except NotFound:  # no model of that name
        return []
    found = []
    for m in stored:
        path = Path(m.path)
        if not is_package(path):
            continue
        try:
            default = read_manifest(path / MANIFEST).default_variant
        except NnshipError:
            default = "(unreadable manifest)"
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        found.append(Stored(str(m.tag), m.tag.name, m.info.creation_time, size, default, m))
    return sorted(found, key=lambda s: s.created, reverse=True)


def available() -> str:
    """The store's nnship packages in a few words, for an error about a model it lacks."""
    try:
        tags = [s.tag for s in packages()]
    except Exception:  # an unreadable store: the caller's own message says enough
        return "the model store cannot be listed"
    if not tags:
        return "the model store holds no nnship models (`nnship export RUN` stores one)"
    more = len(tags) - SHOWN_IN_ERRORS
    shown = ", ".join(tags[:SHOWN_IN_ERRORS]) + (f" and {more} more" if more > 0 else "")
    return f"nnship models in the store: {shown}"


def prune(name: str, keep: int) -> tuple[list[Stored], list[Stored]]:
    """Delete all but the `keep` newest versions of model `name`: (deleted, kept)."""
    import bentoml

    if keep < 1:
        raise NnshipError(f"--keep {keep}: keep at least 1 version")
    if ":" in name:
        raise NnshipError(
            f"{name!r}: name a model, not a version (MODEL, e.g. {name.split(':')[0]})"
        )
    versions = packages(name)
    if not versions:
        raise NnshipError(f"no model {name!r} in the store; {available()}")
    for s in versions[keep:]:
        bentoml.models.delete(s.tag)
    return versions[keep:], versions[:keep]


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _when(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M")


def print_list(found: list[Stored]) -> None:
    """A table on a terminal, else one tab-separated line per package (tag, created, bytes, default)."""
    if not sys.stdout.isatty():
        for s in found:
            print(
                f"{s.tag}\t{s.created.isoformat(timespec='seconds')}\t{s.size_bytes}\t{s.default_variant}"
            )
        return
    from rich.console import Console
    from rich.table import Column, Table

    columns = ("model", "version", "created", "size", "default")
    table = Table(*(Column(c, no_wrap=True) for c in columns))
    for s in found:
        version = s.tag.split(":", 1)[1]
        table.add_row(
            s.name, version, _when(s.created), human_size(s.size_bytes), s.default_variant
        )
    Console().print(table if found else "no nnship models in the store")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the nnship models in the store, newest first")
    pr = sub.add_parser("prune", help="delete all but the newest versions of a model")
    pr.add_argument("model", help="the model's name (all its versions are considered)")
    pr.add_argument("--keep", type=int, required=True, help="versions to keep (at least 1)")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print_list(packages())
        return 0
    deleted, kept = prune(args.model, args.keep)
    for s in deleted:
        print(f"deleted {s.tag} (created {_when(s.created)}, {human_size(s.size_bytes)})")
    print(
        f"{args.model}: deleted {len(deleted)}, kept {len(kept)}: {', '.join(s.tag for s in kept)}"
    )
    return 0
