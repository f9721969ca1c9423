"""Shared pieces of the reliability suite: its own tiny checkpoint, and how it is served: a real `python -m
service` subprocess (for overload, shutdown and soak, where signals, RSS, threads and file descriptors are the
process's own) or a real uvicorn in a thread of the test process (for faults, where one method of the real model
is patched to fail), both from `tests/support/servers.py`.

Everything listens on 127.0.0.1 only and every wait is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.checkpoints import TINY_RGB_64CH_NO_ATTENTION, build_checkpoint


@pytest.fixture(scope="session")
def tiny_64ch_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`TINY_RGB_64CH_NO_ATTENTION`: a 1x1 image (one latent cell) is computable (`test_hostile_input` checks the
    refusal on `tiny_checkpoint`, where it is not), and a 1x100000 image costs no more than its pixels."""
    return build_checkpoint(tmp_path_factory.mktemp("tiny-64ch"), TINY_RGB_64CH_NO_ATTENTION)
