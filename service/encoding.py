"""JSON answers whose float32 values are the shortest decimals that read back to the same float32
(as Triton writes them), encoded by orjson straight from numpy arrays: no per-value Python work."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


def dumps(content: Any) -> bytes:
    """JSON bytes; numpy float32 arrays and scalars as shortest round-trip decimals (C-contiguous
    arrays only)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class Float32JSONResponse(JSONResponse):
    """A JSON response rendered by `dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
