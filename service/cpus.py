"""How many CPUs the process may use, and the thread pools sized from it.

torch sizes its intra-op pool from the node's cores, but a pod limited to 4 CPUs on a 64-core node gets a CFS quota
of 4: 64 threads then take turns on 4 CPUs' worth of time and are throttled each period. The CPUs the process may
use are the smallest of the cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, at the
cgroup root a container sees and at the process's own cgroup) and the affinity mask (`taskset`, cpusets). A
fractional quota rounds down (at least 1), as Go's automaxprocs does: a thread more than the quota is throttled.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
CODEC_THREADS_CAP = 4  # the codecs take ~11 % of the CPU under load (bench/README.md): a few threads keep up


@dataclass(frozen=True)
class CpuBudget:
    """Whole CPUs the process may use and what bounded them (for the startup log)."""

    count: int
    source: str  # "cgroup v2 cpu.max", "cgroup v1 cpu.cfs_quota_us", "affinity" or "host"


@dataclass(frozen=True)
class ThreadPlan:
    """Threads of torch's intra-op pool and of the codec pool: the settings when given, else from the CPU budget."""

    torch: int
    codec: int
    cpus: CpuBudget


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(directory: Path) -> float | None:
    """`cpu.max` holds "<quota> <period>" or "max <period>" (no limit)."""
    text = _read(directory / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not quota.isdigit() or not period.strip().isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    """`cpu.cfs_quota_us` is -1 when unlimited; the period is `cpu.cfs_period_us`."""
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None  # "-1" is not isdigit(): no limit
    return int(quota) / int(period)


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """The process's cgroup v2 path and its v1 `cpu` controller's path, from /proc/self/cgroup."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> tuple[float, str] | None:
    """The tightest CFS quota in CPUs and where it was read, or None when no cgroup limits the CPU time."""
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    found: list[tuple[float, str]] = []
    v2_dirs = {cgroup_root} | ({cgroup_root / v2_path.lstrip("/")} if v2_path else set())
    for directory in v2_dirs:
        quota = _v2_quota(directory)
        if quota is not None:
            found.append((quota, "cgroup v2 cpu.max"))
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = cgroup_root / controller
        for directory in {base} | ({base / v1_path.lstrip("/")} if v1_path else set()):
            quota = _v1_quota(directory)
            if quota is not None:
                found.append((quota, "cgroup v1 cpu.cfs_quota_us"))
    return min(found) if found else None


def affinity_cpus() -> int | None:
    """CPUs in the process's affinity mask (None where the platform has no `sched_getaffinity`)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return len(getaffinity(0)) if getaffinity else None


def available_cpus(
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_CGROUP,
    affinity: int | None = None,
    host: int | None = None,
) -> CpuBudget:
    """The fewest of the quota (rounded down, at least 1), the affinity mask and the host's CPUs (both read from
    this process unless given)."""
    candidates = [(host or os.cpu_count() or 1, "host")]
    mask = affinity if affinity is not None else affinity_cpus()
    if mask:
        candidates.append((mask, "affinity"))
    quota = cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        candidates.append((max(1, math.floor(quota[0])), quota[1]))
    count, source = min(candidates, key=lambda c: c[0])  # ties keep the first: host, then affinity, then quota
    return CpuBudget(count, source)


def thread_plan(torch_threads: int, codec_threads: int, cpus: CpuBudget) -> ThreadPlan:
    """An explicit setting wins; 0 means: torch gets every CPU of the budget, the codecs up to CODEC_THREADS_CAP."""
    return ThreadPlan(
        torch=torch_threads or cpus.count,
        codec=codec_threads or min(cpus.count, CODEC_THREADS_CAP),
        cpus=cpus,
    )
