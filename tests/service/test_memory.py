"""service/memory.py: the allocator policy of the process (keep freed blocks for the next batch; give back on trim)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.memory import can_release_free_memory
from tests.support.constants import ROOT

PROBE = """
from service.memory import keep_freed_memory_for_reuse, release_free_memory
print(keep_freed_memory_for_reuse())
release_free_memory()
"""


def probe(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(not can_release_free_memory(), reason="glibc only")
def test_the_policy_is_set_on_glibc_unless_the_environment_sets_one() -> None:
    assert probe({"PATH": "/usr/bin:/bin"}) == "True"
    assert probe({"PATH": "/usr/bin:/bin", "MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"  # the operator's choice wins
