"""The CPUs the process may use, read from fake cgroup trees (v2 `cpu.max`, v1 CFS quota) and an affinity count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.cpus import CpuBudget, available_cpus, cpu_quota, thread_plan


def tree(tmp_path: Path, files: dict[str, str], own: str = "0::/\n") -> tuple[Path, Path]:
    """A cgroup root holding `files` (relative paths) and a /proc/self/cgroup with `own`."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(own)
    return root, proc


def test_v2_quota_and_period(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {"cpu.max": "400000 100000\n"})
    assert cpu_quota(root, proc) == (4.0, "cgroup v2 cpu.max")


def test_v2_max_means_no_limit(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {"cpu.max": "max 100000\n"})
    assert cpu_quota(root, proc) is None


def test_v2_the_processs_own_cgroup_counts_too(tmp_path: Path) -> None:
    root, proc = tree(
        tmp_path, {"cpu.max": "max 100000", "kubepods/pod1/cpu.max": "150000 100000"}, own="0::/kubepods/pod1\n"
    )
    assert cpu_quota(root, proc) == (1.5, "cgroup v2 cpu.max")


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root, proc = tree(
        tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    )
    assert cpu_quota(root, proc) == (2.0, "cgroup v1 cpu.cfs_quota_us")


def test_v1_minus_one_means_no_limit(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(root, proc) is None


def test_v1_own_cgroup(tmp_path: Path) -> None:
    root, proc = tree(
        tmp_path,
        {"cpu/docker/abc/cpu.cfs_quota_us": "300000", "cpu/docker/abc/cpu.cfs_period_us": "100000"},
        own="4:cpu,cpuacct:/docker/abc\n",
    )
    assert cpu_quota(root, proc) == (3.0, "cgroup v1 cpu.cfs_quota_us")


def test_no_cgroup_files_no_quota(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {})
    assert cpu_quota(root, proc) is None


def test_garbage_is_ignored(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {"cpu.max": "lots\n", "cpu/cpu.cfs_quota_us": "x", "cpu/cpu.cfs_period_us": "0"})
    assert cpu_quota(root, proc) is None


@pytest.mark.parametrize(
    ("files", "affinity", "expected"),
    [
        ({"cpu.max": "400000 100000"}, 16, CpuBudget(4, "cgroup v2 cpu.max")),  # the quota is the tightest
        ({"cpu.max": "400000 100000"}, 2, CpuBudget(2, "affinity")),  # taskset to 2 under a quota of 4
        ({"cpu.max": "150000 100000"}, 16, CpuBudget(1, "cgroup v2 cpu.max")),  # 1.5 rounds down
        ({"cpu.max": "50000 100000"}, 16, CpuBudget(1, "cgroup v2 cpu.max")),  # never below 1
    ],
)
def test_available_cpus_takes_the_minimum(
    tmp_path: Path, files: dict[str, str], affinity: int, expected: CpuBudget
) -> None:
    root, proc = tree(tmp_path, files)
    assert available_cpus(root, proc, affinity=affinity, host=64) == expected


def test_no_quota_and_a_full_mask_is_the_host(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {})
    assert available_cpus(root, proc, affinity=64, host=64) == CpuBudget(64, "host")


def test_this_process_reads_its_own_limits() -> None:
    """The real files of this machine: never more than its cores or its affinity mask."""
    budget = available_cpus()
    assert 1 <= budget.count <= min(os.cpu_count() or 1, len(os.sched_getaffinity(0)))


def test_explicit_settings_win_and_zero_means_the_budget() -> None:
    budget = CpuBudget(8, "cgroup v2 cpu.max")
    assert (thread_plan(0, 0, budget).torch, thread_plan(0, 0, budget).codec) == (8, 4)  # codecs capped at 4
    assert (thread_plan(3, 2, budget).torch, thread_plan(3, 2, budget).codec) == (3, 2)
    small = CpuBudget(1, "affinity")
    assert (thread_plan(0, 0, small).torch, thread_plan(0, 0, small).codec) == (1, 1)
