"""The `nnship` console script: one subcommand per stage, each a thin parser over a typed function.

Only the chosen subcommand's module is imported: `nnship --help` and `nnship serve --help` never
load torch or the other stages."""

from __future__ import annotations

import argparse
import importlib
import sys

from nnship import __version__
from nnship.runner import run_guarded

SUBCOMMANDS = {
    "train": ("nnship.training.cli", "train a network on a built-in or user data set"),
    "export": (
        "nnship.export.cli",
        "export a run to ONNX, verify, optimize and store it as a model package",
    ),
    "serve": (
        "nnship.service.cli",
        "serve a model package over HTTP with BentoML and ONNX Runtime",
    ),
    "predict": (
        "nnship.batch.cli",
        "run a model package over files of rows into a file of predictions",
    ),
    "build": ("nnship.service.build", "build a Bento holding the service and a stored model"),
    "containerize": (
        "nnship.service.containerize",
        "build an OCI serving image (ONNX Runtime, no torch) with Podman or Docker",
    ),
    "loadtest": (
        "nnship.loadtests.slo",
        "load-test a running service and gate on an SLO, or sweep the load to find the knee",
    ),
    "models": ("nnship.store", "list the nnship models in the BentoML model store, or prune them"),
}


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, import the chosen stage's CLI module alone, and run it."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = _chosen(argv)
    parser = argparse.ArgumentParser(prog="nnship", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nnship {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    return run_guarded(args._run, args)


if __name__ == "__main__":
    sys.exit(main())
