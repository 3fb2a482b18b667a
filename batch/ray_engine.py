"""`--engine ray`: the same job on Ray Data (an optional extra: pip install 'nnship[ray]')."""

from __future__ import annotations

import importlib.util

from nnship.errors import NnshipError


def require_ray() -> None:
    """Refuse in one line when Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise NnshipError("--engine ray needs Ray, an optional extra: pip install 'nnship[ray]'")
    raise NnshipError("--engine ray is not available in this version; use --engine local")
