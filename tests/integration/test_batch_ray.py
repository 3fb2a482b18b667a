"""`nnship predict --engine ray` writes what the local engine writes, byte for byte."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnship.batch.job import Options, predict

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_output_equals_the_local_engines(iris_package, tmp_path, local_ray):
    tag = f"{iris_package['model']}:{iris_package['version']}"
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.uniform(0, 8, (5000, 4)), columns=iris_package["input"]["feature_names"])
    df.insert(0, "id", np.arange(5000))
    df.iloc[7, 2] = np.nan
    df.to_parquet(tmp_path / "in.parquet", index=False, row_group_size=700)
    df.iloc[:1500].to_csv(tmp_path / "in.csv", index=False)
    for out in ("o.parquet", "o.csv", "parts"):
        summaries = {}
        for engine in ("local", "ray"):
            summaries[engine] = predict(
                Options(
                    tag,
                    str(tmp_path / "in.*"),
                    tmp_path / engine / out,
                    engine=engine,
                    keep=["id"],
                    part_rows=1000,
                    threads=1,
                    progress=False,
                    rejects=tmp_path / engine / f"{out}.rejects.jsonl",
                )
            )
        local, remote = tmp_path / "local" / out, tmp_path / "ray" / out
        assert (summaries["ray"].rows, summaries["ray"].rejects) == (6500, 2)
        if out == "parts":
            names = sorted(p.name for p in local.iterdir())
            assert names == sorted(p.name for p in remote.iterdir()) and len(names) == 7
            for name in names:
                assert (local / name).read_bytes() == (remote / name).read_bytes(), name
        else:
            assert local.read_bytes() == remote.read_bytes()
        rejects = f"{out}.rejects.jsonl"
        assert (tmp_path / "local" / rejects).read_bytes() == (
            tmp_path / "ray" / rejects
        ).read_bytes()
