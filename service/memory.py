"""How much memory the process may use, and handing freed memory back to the system.

The memory budget of a batch (`VQSERVE_MEMORY_BUDGET_MB`) defaults to a share of what the process may use: the
cgroup limit where there is one (a Kubernetes pod's), else the host's memory. glibc keeps large freed blocks in
its arenas, so after a large batch the process would stay at its peak: `release_free_memory` asks it to return
them (`malloc_trim`), which brings RSS back near the idle footprint (bench/README.md, tiling). Between batches,
though, freed blocks are kept for the next one (`keep_freed_memory_for_reuse`): unmapping and page-faulting them
again made a 256² batch of 4 take 1.32× as long.
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
def _libc_function(name: str, argtypes: tuple[type, ...]) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """A function of glibc, the C library the process already runs on, typed to return int; None elsewhere (musl,
    macOS)."""
    library = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):  # not glibc
        return None
    if function is not None:
        function.argtypes, function.restype = list(argtypes), ctypes.c_int
    return function


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    return _libc_function("malloc_trim", (ctypes.c_size_t,))


# glibc options (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BELOW = 1 << 30  # blocks up to this size come from (and go back to) the heap, not fresh mmaps


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc keep freed blocks up to KEEP_FREED_BELOW for the next batch instead of unmapping them; True if set.

    By default glibc serves blocks above its (at most 32 MiB) mmap threshold with a fresh mmap and unmaps them on
    free, so every large activation of every batch is page-faulted and zeroed anew: 256² reconstructs at batch 4
    took 1.32× as long (bench/allocator.py, bench/README.md section 8.5). With fixed thresholds the memory stays
    with the process between batches; `release_free_memory` (after very large batches, and once the service is
    idle) still hands it back. A MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment wins."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BELOW))


def can_release_free_memory() -> bool:
    """Whether `release_free_memory` does anything here (glibc)."""
    return _malloc_trim() is not None


def release_free_memory() -> None:
    """Return freed heap memory to the system (glibc's `malloc_trim(0)`); a no-op elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
