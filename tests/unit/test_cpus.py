"""Usable cores: the affinity narrowed by a cgroup CPU quota (v2, v1, set on a parent, or none),
read from cgroup trees laid out as the kernel shows them."""

from pathlib import Path

import pytest

from nnship import cpus
from nnship.batch.pipeline import default_workers
from nnship.service.settings import Settings


def tree(tmp_path: Path, proc: str, files: dict[str, str | bytes]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (root / name).write_bytes(text)
        else:
            (root / name).write_text(text)
    (tmp_path / "proc-cgroup").write_text(proc)
    return root, tmp_path / "proc-cgroup"


@pytest.mark.parametrize(
    ("proc", "files", "cores"),
    [
        # a container with its own cgroup namespace (podman --cpus 1.5, a pod's CPU limit)
        ("0::/\n", {"cgroup.controllers": "cpu", "cpu.max": "150000 100000\n"}, 1.5),
        ("0::/\n", {"cgroup.controllers": "cpu", "cpu.max": "max 100000\n"}, None),
        # the host's view: the limit is on a parent of the process's cgroup
        (
            "0::/pods/p1/c1\n",
            {"pods/p1/cpu.max": "200000 100000", "pods/p1/c1/cpu.max": "max 100000"},
            2.0,
        ),
        # v1, with the cpu controller mounted with cpuacct and other controllers listed
        (
            "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            3.0,
        ),
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        # v2 beside v1 (a hybrid mount): the unified tree sits under unified/
        (
            "1:cpu:/\n0::/app\n",
            {"unified/cgroup.controllers": "", "unified/app/cpu.max": "50000 100000"},
            0.5,
        ),
        # unreadable or garbled files are no limit
        ("0::/\n", {"cpu.max": "lots 100000"}, None),
        ("0::/app\n", {"app/cpu.max": b"\xff\xfe 100000"}, None),
        ("", {}, None),
    ],
)
def test_cgroup_quota_in_cores(tmp_path, proc, files, cores):
    root, proc_file = tree(tmp_path, proc, files)
    assert cpus.cgroup_cores(root, proc_file) == cores


def test_usable_cores_are_the_affinity_narrowed_by_the_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "affinity_cores", lambda: 64)
    root, proc = tree(tmp_path, "0::/\n", {"cpu.max": "150000 100000"})
    monkeypatch.setattr(cpus, "CGROUP_ROOT", root)
    monkeypatch.setattr(cpus, "PROC_CGROUP", proc)
    assert cpus.usable_cores() == 2
    # every "all cores" default counts the same way: ONNX Runtime's threads, batch workers
    assert Settings(model="m").intra_op_threads == 2
    assert Settings(model="m", workers=2).intra_op_threads == 1
    assert default_workers(1) == 1 and default_workers(0) == 1
    (root / "cpu.max").write_text("max 100000")
    assert cpus.usable_cores() == 64
    assert Settings(model="m").intra_op_threads == 64 and default_workers(1) == 8
