"""`nnship build MODEL[:VERSION]`: a Bento holding the service, its serving sources and the model.

The Bento's `src/` holds the `nnship` package in its installed layout (the bottom layer and the
service only: serving never imports torch, training or export), its Python requirements are the
serving dependencies alone, and `NNSHIP_MODEL` is set to the stored model it carries, so
`bentoml serve NAME:VERSION` and `bentoml containerize NAME:VERSION` serve that model.

With `--wheelhouse` the Bento also carries the wheels of every serving requirement (downloaded on
the host with its own pip configuration, the same cache `nnship containerize` uses) and a
Dockerfile template (deploy/container/bento.Dockerfile.j2) that installs them with no package index,
on the local Debian base image: `bentoml containerize` then builds offline."""

from __future__ import annotations

import argparse
import contextlib
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
    "orjson>=3.10",  # float32 answers as shortest round-trip decimals
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


def offline_options(ctx: Path, python: dict) -> dict:
    """Build options for an offline `bentoml containerize`: the serving wheels (linked into the
    build context, which BentoML requires them to be in), the local Debian base image and the
    template that installs from those wheels."""
    from nnship.service.containerize import RECIPE, base_image, engine, wheelhouse

    (ctx / "wheels").mkdir()
    wheels = []
    for wheel in sorted(wheelhouse(list(SERVING_REQUIREMENTS)).glob("*.whl")):
        try:
            os.link(wheel, ctx / "wheels" / wheel.name)
        except OSError:  # another file system
            shutil.copy2(wheel, ctx / "wheels" / wheel.name)
        wheels.append(f"wheels/{wheel.name}")
    shutil.copy2(RECIPE / "bento.Dockerfile.j2", ctx / "Dockerfile.j2")
    return {
        "python": {**python, "wheels": wheels, "lock_packages": False},
        "docker": {
            "base_image": base_image(None, engine()),  # built by debootstrap when missing
            "dockerfile_template": "Dockerfile.j2",
        },
    }


def build_bento(ref: str, version: str | None = None, offline: bool = False) -> str:
    """Build the Bento for stored model `ref` (`offline`: with its wheels); returns its tag."""
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    tag = resolve_model(ref)
    python = {"packages": list(SERVING_REQUIREMENTS)}
    previous = os.environ.get("NNSHIP_MODEL")
    os.environ["NNSHIP_MODEL"] = tag  # the service declares the model it serves from this setting
    try:
        with tempfile.TemporaryDirectory(prefix="nnship-bento-") as tmp:
            ctx = Path(tmp)
            source_tree(ctx)
            options = offline_options(ctx, python) if offline else {"python": python}
            with contextlib.chdir(ctx):  # BentoML takes wheels only from below the working folder
                bento = bentoml.bentos.build(
                    SERVICE,
                    name=BENTO_NAME,
                    version=version,
                    labels={"model": tag.replace(":", "-")},
                    description=f"nnship serving {tag} with ONNX Runtime",
                    include=["nnship/**/*.py"],
                    envs=[BentoEnvSchema(name="NNSHIP_MODEL", value=tag, stage="runtime")],
                    **options,
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
    p.add_argument(
        "--wheelhouse",
        action="store_true",
        help="carry the serving wheels so that `bentoml containerize` builds with no package index",
    )


def run(args: argparse.Namespace) -> int:
    print(build_bento(args.model, args.version, args.wheelhouse))
    return 0
