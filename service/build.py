"""`nnship build MODEL[:VERSION]`: a Bento holding the service, its serving sources and the model.

The Bento's `src/` holds the `nnship` package in its installed layout (the bottom layer and the
service only: serving never imports torch, training or export), its Python requirements are the
serving dependencies alone, and `NNSHIP_MODEL` is set to the stored model it carries, so
`bentoml serve NAME:VERSION` and `bentoml containerize NAME:VERSION` serve that model."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SERVICE = "nnship.service.service:NnshipService"
BENTO_NAME = "nnship"
# what the serving path imports (nnship/ and service/), kept in step with pyproject.toml and bentofile.yaml
SERVING_REQUIREMENTS = (
    "bentoml==1.4.40",
    "onnxruntime>=1.20",
    "onnx>=1.17",  # reads the graph for operators that couple rows of a batch
    "numpy>=1.26",
    "pydantic>=2",
    "pydantic-settings>=2.4",
    "prometheus-client>=0.20",
    "orjson>=3.10",
)


def source_tree(ctx: Path) -> None:
    """Copy the installed `nnship` bottom layer and `nnship.service` into ctx/nnship/."""
    import nnship
    import nnship.service

    for package, target in ((nnship, ctx / "nnship"), (nnship.service, ctx / "nnship" / "service")):
        target.mkdir(parents=True, exist_ok=True)
        for source in Path(package.__file__).parent.glob("*.py"):
            shutil.copy2(source, target / source.name)


def resolve_model(ref: str) -> str:
    """The stored model's full tag (NAME:VERSION); `latest` or no version picks the newest."""
    from nnship.package import stored_model

    return str(stored_model(ref).tag)


def build_bento(ref: str, version: str | None = None) -> str:
    """Build the Bento for stored model `ref`; returns its tag."""
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    tag = resolve_model(ref)
    previous = os.environ.get("NNSHIP_MODEL")
    os.environ["NNSHIP_MODEL"] = tag  # the service declares the model it serves from this setting
    try:
        with tempfile.TemporaryDirectory(prefix="nnship-bento-") as tmp:
            ctx = Path(tmp)
            source_tree(ctx)
            bento = bentoml.bentos.build(
                SERVICE,
                name=BENTO_NAME,
                version=version,
                labels={"model": tag.replace(":", "-")},
                description=f"nnship serving {tag} with ONNX Runtime",
                include=["nnship/**/*.py"],
                envs=[BentoEnvSchema(name="NNSHIP_MODEL", value=tag, stage="runtime")],
                python={"packages": list(SERVING_REQUIREMENTS)},
                models=[tag],
                build_ctx=str(ctx),
            )
    finally:
        if previous is None:
            os.environ.pop("NNSHIP_MODEL", None)
        else:
            os.environ["NNSHIP_MODEL"] = previous
    log.info("built Bento %s holding %s", bento.tag, tag)
    return str(bento.tag)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="MODEL[:VERSION] in the BentoML model store")
    p.add_argument("--version", help="the Bento's version (default: generated)")


def run(args: argparse.Namespace) -> int:
    print(build_bento(args.model, args.version))
    return 0
