"""The `nnship` console script: one subcommand per stage, each a thin parser over a typed function."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from nnship.errors import NnshipError

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
    "loadtest": (
        "nnship.loadtests.slo",
        "load-test a running service with Locust and gate on an SLO",
    ),
}


PACKAGES = ("nnship",)  # one logger tree: nnship.models, nnship.training, nnship.service, ...


def setup_logging(verbose: bool = False) -> None:
    """Our packages log at INFO (DEBUG with verbose); libraries only say warnings. Ranks > 0 stay quiet."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if verbose else logging.INFO
    if int(os.environ.get("RANK", 0)) != 0:
        level = logging.WARNING
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)


def run_guarded(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; an NnshipError becomes one line on stderr and exit code 2."""
    setup_logging(getattr(args, "verbose", False))
    try:
        return fn(args)
    except NnshipError as e:
        print(f"nnship: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnship: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    import importlib

    parser = argparse.ArgumentParser(prog="nnship", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    return run_guarded(args._run, args)


if __name__ == "__main__":
    sys.exit(main())
