"""How much memory the process may use, and handing freed memory back to the system.

The memory budget of a batch (`VQSERVE_MEMORY_BUDGET_MB`) defaults to a share of what the process may use: the
cgroup limit where there is one (a Kubernetes pod's), else the host's memory. glibc keeps large freed blocks in
its arenas, so after a large batch the process would stay at its peak: `release_free_memory` asks it to return
them (`malloc_trim`), which brings RSS back near the idle footprint (bench/README.md, tiling).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path

BUDGET_SHARE = 16  # the default budget is 1/16 of the memory the process may use


def memory_limit_bytes() -> int:
    """The cgroup v2 `memory.max` or v1 `memory.limit_in_bytes` when set, else the host's physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number mean no limit
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget_bytes() -> int:
    return max(256 << 20, memory_limit_bytes() // BUDGET_SHARE)


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's `malloc_trim`, from the C library the process already runs on, or None (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def can_release_free_memory() -> bool:
    """Whether `release_free_memory` does anything here (glibc)."""
    return _malloc_trim() is not None


def release_free_memory() -> None:
    """Return freed heap memory to the system (glibc's `malloc_trim(0)`); a no-op elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
