"""`--engine ray`: the job on Ray Data (an optional extra: pip install 'nnship[ray]').

The dataset is the job's parts: one item per block of a Parquet or NPY file (each read on its own
from its row groups or memory map), one per CSV, JSON Lines or NPZ file (streamed block by block).
`map_batches` sends the items to a pool of actors, each holding one ONNX Runtime session; an actor
reads, checks, infers and writes its parts into the staging folder with the local engine's code, so
the parts, and the output assembled from them in order, are the local engine's byte for byte. One
machine starts a local Ray; with RAY_ADDRESS set the job joins that cluster (the output's folder
must then be on storage every node shares)."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nnship.errors import NnshipError

log = logging.getLogger(__name__)
STREAMED = (".csv", ".jsonl", ".ndjson", ".npz")  # no block can be read without the ones before


def require_ray() -> None:
    """Refuse in one line when Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise NnshipError("--engine ray needs Ray, an optional extra: pip install 'nnship[ray]'")


class PartWriter:
    """A Ray actor: one ONNX Runtime session, and the local engine's read, check, infer, write."""

    def __init__(self, job: dict[str, Any]):
        from nnship.batch.engine import Engine, open_runtime
        from nnship.service.validation import Validator

        self.job = job
        runtime = open_runtime(job["package"], job["variant"], job["threads"])
        self.validator = Validator(runtime.manifest, max_rows=1)
        self.engine = Engine(runtime, job["batch_size"], self.validator)

    def _blocks(self, path: Path, block: int) -> Iterator[tuple[int, Any]]:
        from nnship.batch.sources import read_block_at, read_blocks

        spec, rows = self.job["spec"], self.job["part_rows"]
        if block < 0:
            yield from enumerate(read_blocks(path, spec, rows))
        else:
            yield block, read_block_at(path, spec, rows, block)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from nnship.batch.job import check_block, part_key, process, store_part

        job, entries = self.job, []
        for fi, path, block in zip(batch["file"], batch["path"], batch["block"], strict=True):
            for bi, b in self._blocks(Path(path), int(block)):
                checked = check_block(b, job["spec"], self.validator)
                table, records = process(b, checked, self.engine)
                key = part_key(int(fi), bi)
                entry = store_part(
                    Path(job["stage"]), key, table, records, checked.rows, job["fmt"], job["header"]
                )
                entries.append(json.dumps(entry))
        return {"entry": np.array(entries, dtype=object)}


def items(files: list[Path], rows: int) -> list[dict[str, Any]]:
    """The dataset: a block of a Parquet or NPY file, or a whole streamed file, per item."""
    from nnship.batch.sources import total_rows

    out = []
    for fi, f in enumerate(files):
        n = None if f.suffix.lower() in STREAMED else total_rows(f)
        blocks = [-1] if n is None else range(max(1, -(-n // rows)))
        out += [{"file": fi, "path": str(f), "block": b} for b in blocks]
    return out


def run(job: dict[str, Any], files: list[Path], actors: int) -> Iterator[dict[str, Any]]:
    """The parts' entries, as the actors finish them (in any order)."""
    require_ray()
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    size = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, job["threads"]))
    log.info("Ray Data: %d actors of %d threads each", size, job["threads"])
    ds = ray.data.from_items(items(files, job["part_rows"]))
    ds = ds.map_batches(
        PartWriter,
        fn_constructor_kwargs={"job": job},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=max(1, job["threads"]),
    )
    for row in ds.iter_rows():
        yield json.loads(row["entry"])
