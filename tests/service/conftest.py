"""Shared fixtures: a tiny random-weight checkpoint on disk, images as file bytes, and a served app."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

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


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode)


def image_bytes(image: Image.Image, fmt: str = "PNG", **save_args: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save_args)
    return buf.getvalue()


def png(height: int = 24, width: int = 32, seed: int = 0, mode: str = "RGB") -> bytes:
    return image_bytes(random_image(height, width, mode, seed))


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


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
