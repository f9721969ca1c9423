"""Session fixtures every test package shares: the tiny test checkpoints (`tests/support/checkpoints.py`).

A fixture name is one model everywhere: `tiny_checkpoint` is `TINY_RGB` (seed 0), `gray_checkpoint` is `TINY_GRAY`
(seed 1), `tiny_prior_checkpoint` is `TINY_RGB` (seed 0) with a `TINY_PRIOR` (seed 0) in its `prior/`. A package
that needs another size names its fixture after that size (`tests/reliability/conftest.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.checkpoints import TINY_GRAY, TINY_RGB, add_prior, build_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("tiny"), TINY_RGB)


@pytest.fixture(scope="session")
def gray_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("gray"), TINY_GRAY, seed=1)


@pytest.fixture(scope="session")
def tiny_prior_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return add_prior(build_checkpoint(tmp_path_factory.mktemp("tiny-prior"), TINY_RGB))
