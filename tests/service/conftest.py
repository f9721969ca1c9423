"""Shared fixtures: a tiny random-weight checkpoint on disk and a served app (test images: `tests/images.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model import VQModel
from service.app import create_app
from service.settings import Settings

TINY = {
    "block_out_channels": (32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "num_vq_embeddings": 64,
    "norm_num_groups": 32,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
}


def make_checkpoint(path: Path, seed: int = 0, **overrides: object) -> Path:
    import torch

    torch.manual_seed(seed)
    VQModel(**{**TINY, **overrides}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def gray_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("gray"), seed=1, in_channels=1, out_channels=1)


@pytest.fixture
def make_client(tiny_checkpoint: Path) -> Iterator[object]:
    """A factory: `make_client(**settings)` -> a TestClient running the app's real lifespan."""
    clients: list[TestClient] = []

    def factory(**overrides: object) -> TestClient:
        settings = Settings(**{"model_path": tiny_checkpoint, "warmup": False, **overrides})
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: object) -> TestClient:
    return make_client()  # type: ignore[operator, no-any-return]
