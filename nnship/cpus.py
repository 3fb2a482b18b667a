"""The cores a process may really use: its CPU affinity, narrowed by a cgroup CPU quota.

A container started with `--cpus 2`, or a Kubernetes pod with a CPU limit of 2, still sees every
core of its host in `os.cpu_count()` and in its affinity; only the cgroup's quota says that it gets
two cores' worth of time. Thread pools sized by the host's cores then run far more threads than
the quota feeds, and each is throttled in turn. Every "all cores" default in nnship (ONNX Runtime's
intra-op threads, PyTorch's threads, batch jobs' workers) counts with `usable_cores()`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def affinity_cores() -> int:
    """The cores this process may be scheduled on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _quota_v2(text: str) -> float | None:
    """cgroup v2's cpu.max ("max 100000", "150000 100000") as cores; None without a limit."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _cores(fields[0], fields[1])


def _cores(quota_text: str, period_text: str) -> float | None:
    """A quota and its period (cgroup v1's cpu.cfs_quota_us and cpu.cfs_period_us, or cpu.max's
    two fields) as cores; None for no limit (-1) or text that is not a number."""
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):  # missing, unreadable, or a name that is not UTF-8
        return None


def _ancestors(path: str) -> list[str]:
    """A cgroup's path and each of its parents' (a limit set higher up applies too)."""
    parts = [p for p in path.strip().split("/") if p]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cores(root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """The CPU quota of this process's cgroup and its parents, in cores (the smallest one); None
    when no quota is set or none can be read."""
    root = root or CGROUP_ROOT
    text = _read(proc_cgroup or PROC_CGROUP) or ""
    quotas: list[float | None] = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 (unified)
            base = root / "unified" if (root / "unified" / "cgroup.controllers").exists() else root
            for c in _ancestors(path):
                quotas.append(_quota_v2(_read(base / c / "cpu.max") or ""))
        elif "cpu" in controllers.split(","):  # v1
            for name in (controllers, "cpu", "cpu,cpuacct"):
                if (root / name).is_dir():
                    break
            for c in _ancestors(path):
                folder = root / name / c
                quota = _read(folder / "cpu.cfs_quota_us") or ""
                quotas.append(_cores(quota, _read(folder / "cpu.cfs_period_us") or ""))
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def usable_cores() -> int:
    """The affinity's cores, at most the cgroup quota rounded up; at least 1."""
    cores = affinity_cores()
    quota = cgroup_cores()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)
