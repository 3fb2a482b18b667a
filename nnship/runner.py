"""Running one command: logging set-up, and an NnshipError turned into one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from nnship.errors import NnshipError

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
