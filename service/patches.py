"""The replacements nnship makes inside BentoML 1.4 and uvicorn, installed by one call.

BentoML builds the service's ASGI app, and its worker builds uvicorn's config, from classes it looks
up by module attribute when it builds them, after the service module has been imported. Each
replacement below swaps such an attribute for nnship's subclass or stand-in; each module's docstring
says why it exists and what it measurably changes:

- `timeouts.CancellingTimeout` for BentoML's TimeoutMiddleware (timers cancelled, whole-exchange
  deadline);
- `concurrency.ConcurrencyLimit` for BentoML's MaxConcurrencyMiddleware (the 429 in nnship's shape);
- `pathlabels.BoundedPathMetrics` for BentoML's RunnerTrafficMetricsMiddleware (bounded `endpoint`
  labels, websockets refused first);
- `connections.BoundedH11Protocol` for uvicorn's "auto" HTTP protocol (request-head deadline,
  connection cap, gentle drain);
- `fastlane.FastPredict` wrapped around the middleware stack BentoML's service app builds (POST
  /predict answered outermost, doing the work of the layers it skips).

This works only because BentoML 1.4 looks these names up late and orders its middleware as it does,
so pyproject pins the exact BentoML version (BENTOML_VERSION) and tests/unit/test_patches.py builds
the app as BentoML builds it and asserts each replacement is the class in use, in its place.
"""

from __future__ import annotations

import logging
import re

import bentoml

from nnship.service import concurrency, connections, fastlane, pathlabels, timeouts
from nnship.service.settings import Settings

log = logging.getLogger(__name__)
BENTOML_VERSION = "1.4.40"  # the version the replacements were written and tested against
# the routes the service answers: their paths are the only `endpoint` labels besides /__other__
KNOWN_PATHS = frozenset(
    {
        "/",
        "/predict",
        "/livez",
        "/readyz",
        "/healthz",
        "/metrics",
        "/docs.json",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/repository/index",
    }
)


def install(settings: Settings, model_name: str) -> None:
    """Install every replacement, before BentoML builds the app or its worker uvicorn (idempotent)."""
    if bentoml.__version__ != BENTOML_VERSION:
        log.warning(
            "BentoML %s is installed; nnship's replacements are tested with %s only",
            bentoml.__version__,
            BENTOML_VERSION,
        )
    timeouts.install()
    fastlane.install()
    concurrency.install()
    connections.install(settings.header_timeout_s, settings.max_connections)
    pathlabels.install(
        known=KNOWN_PATHS,
        # version paths are left out: a client-chosen version string must not become a label
        known_patterns=[rf"^/v2/models/{re.escape(model_name)}(/ready|/infer|/config)?$"],
        bound=settings.bound_metric_paths,
    )
