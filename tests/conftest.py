"""Session fixtures every test package shares: the tiny test checkpoints (`tests/support/checkpoints.py`).

A fixture name is one model everywhere: `tiny_checkpoint` is `TINY_RGB` (seed 0), `gray_checkpoint` is `TINY_GRAY`
(seed 1), `tiny_prior_checkpoint` is `TINY_RGB` (seed 0) with a random prior (`tests/support/priors.py`, seed 0)
in its `prior/`. A package that needs another size names its fixture after that size
(`tests/reliability/conftest.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.checkpoints import TINY_GRAY, TINY_RGB, build_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("tiny"), TINY_RGB)


@pytest.fixture(scope="session")
def gray_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("gray"), TINY_GRAY, seed=1)


@pytest.fixture(scope="session")
def tiny_prior_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-conditional prior (3 labels) over TINY_RGB's 64 codes, on 4x4 grids (8x8 images at its factor 2):
    16 raster steps a sample, milliseconds each on one CPU thread."""
    from model.prior import PRIOR_SUBFOLDER  # imported here: loading this conftest stays free of torch
    from tests.support.priors import tiny_prior

    path = build_checkpoint(tmp_path_factory.mktemp("tiny-prior"), TINY_RGB)
    tiny_prior(64, (4, 4), num_labels=3).save_pretrained(path / PRIOR_SUBFOLDER)
    return path
