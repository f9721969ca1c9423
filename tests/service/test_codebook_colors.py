"""GET /models/{name}/codebook/colors: an RGB colour per code, from the codebook's first three principal components.

The web page draws its code map in these colours, so they must be stable (the same weights give the same colours)
and must carry the codebook's geometry: codes whose vectors are close get colours that are close.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model import VQModel
from model.quantizer import VectorQuantizer
from tests.support.constants import WEIGHTS

pytestmark = pytest.mark.timeout(120)


def nearest_closer_than_random(embedding: np.ndarray, colors: np.ndarray) -> tuple[float, float]:
    """(mean colour distance from each code to its nearest code in embedding space, mean to a random other code)."""
    vectors = embedding.astype(np.float64)
    rgb = colors.astype(np.float64)
    k = len(vectors)
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(axis=1)
    others = (np.arange(k) + np.random.default_rng(0).integers(1, k, size=k)) % k  # never the code itself
    to_nearest = np.linalg.norm(rgb - rgb[nearest], axis=1).mean()
    to_random = np.linalg.norm(rgb - rgb[others], axis=1).mean()
    return float(to_nearest), float(to_random)


def test_colors_are_one_rgb_triple_per_code_and_stable(client: TestClient, tiny_checkpoint: Path) -> None:
    reply = client.get("/models/default/codebook/colors")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert (body["model"], body["codebook_size"]) == ("default", 64)
    colors = np.array(body["colors"])
    assert colors.shape == (64, 3)
    assert colors.dtype.kind == "i"
    assert colors.min() == 0, "not spread over the colour range (or below it)"
    assert colors.max() == 255, "not spread over the colour range (or above it)"
    assert len(np.unique(colors, axis=0)) > 32, "most codes share a colour"

    # deterministic: the same reply again, and the same as computed afresh from the checkpoint's weights
    assert client.get("/models/default/codebook/colors").json() == body
    model = VQModel.from_pretrained(tiny_checkpoint, device="cpu")
    assert np.array_equal(model.quantize.principal_colors().numpy(), colors)

    embedding = model.quantize.embedding.weight.detach().numpy()
    to_nearest, to_random = nearest_closer_than_random(embedding, colors)
    assert to_nearest < 0.6 * to_random, (to_nearest, to_random)


def test_unknown_model_is_404_and_the_key_is_required(make_client: object) -> None:
    client = make_client(api_keys="k1")  # type: ignore[operator]
    assert client.get("/models/default/codebook/colors").status_code == 401
    auth = {"authorization": "Bearer k1"}
    missing = client.get("/models/nope/codebook/colors", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert len(client.get("/models/default/codebook/colors", headers=auth).json()["colors"]) == 64


@pytest.mark.parametrize("name", ["default", "digits"])
def test_shipped_codebooks_get_colours_that_follow_their_geometry(name: str) -> None:
    model = VQModel.from_pretrained(WEIGHTS / name, device="cpu")
    colors = model.quantize.principal_colors().numpy()
    embedding = model.quantize.embedding.weight.detach().numpy()
    assert colors.shape == (model.codebook_size, 3)
    sample = slice(0, 2048)  # the pairwise distances of 8192 codes would take 512 MiB
    to_nearest, to_random = nearest_closer_than_random(embedding[sample], colors[sample])
    assert to_nearest < 0.5 * to_random, (to_nearest, to_random)


def test_colors_of_a_low_dimensional_or_degenerate_codebook_are_defined() -> None:
    line = VectorQuantizer(8, 2)
    with torch.no_grad():
        line.embedding.weight.copy_(torch.arange(8.0)[:, None] * torch.tensor([[1.0, 2.0]]))  # rank 1, 2 dims
    colors = line.principal_colors().numpy()
    assert colors.shape == (8, 3)
    assert np.array_equal(colors[:, 0], np.sort(colors[:, 0])) or np.array_equal(colors[::-1, 0], np.sort(colors[:, 0]))
    assert (colors[0, 0], colors[-1, 0]) in ((0, 255), (255, 0))  # the one direction of variance spans the range
    assert (colors[:, 1:] == 128).all(), "no variance (rank 1) and no third dimension: mid-grey"


def test_colors_do_not_depend_on_the_serving_dtype(client: TestClient, make_client: object) -> None:
    """Computed from the checkpoint's float32 weights before the cast, so a bfloat16 server shows the same map."""
    half = make_client(dtype="bfloat16")  # type: ignore[operator]
    assert half.get("/models/default").json()["dtype"] == "bfloat16"
    colors = half.get("/models/default/codebook/colors").json()["colors"]
    assert colors == client.get("/models/default/codebook/colors").json()["colors"]
