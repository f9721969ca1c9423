"""Inputs larger than VQSERVE_TILE_SIZE: tiles ride the batcher as ordinary items and are blended back.

Real app (TestClient, real lifespan), the tiny random-weight checkpoint; tile sizes are small so that ordinary
test images need many tiles. The quality of tiling on a trained model is measured in bench/tiling.py.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from model import VQModel
from model.pixels import from_uint8
from tests.support.constants import PNG
from tests.support.images import decode_png, image_bytes, random_rgb
from tests.support.servers import parse_metric

pytestmark = pytest.mark.timeout(120)
TILED = {"tile_size": 32, "tile_overlap": 8}


def metric(client: TestClient, name: str, **labels: str) -> float:
    return parse_metric(client.get("/metrics").text, name, **labels)


def test_large_inputs_are_tiled_on_every_route_and_keep_their_sizes(make_client: Callable[..., TestClient]) -> None:
    client = make_client(**TILED)
    data = image_bytes(random_rgb(90, 70))
    reply = client.post("/reconstruct", content=data, headers=PNG)
    assert reply.status_code == 200
    assert int(reply.headers["x-tiles"]) > 1
    assert decode_png(reply.content).shape == (90, 70, 3)
    encoded = client.post("/encode", content=data, headers=PNG)
    assert int(encoded.headers["x-tiles"]) > 1
    assert encoded.json()["shape"] == [45, 35]
    decoded = client.post("/decode", json={"indices": encoded.json()["indices"]})
    assert int(decoded.headers["x-tiles"]) > 1
    assert decode_png(decoded.content).shape == (90, 70, 3)
    latents = np.random.default_rng(1).standard_normal((1, 4, 30, 20)).astype(np.float32)
    remote = client.post(
        "/remote/decode",
        content=latents.tobytes(),
        params={"shape": [1, 4, 30, 20], "dtype": "float32", "output_type": "pt"},
        headers={"content-type": "tensor/binary", "accept": "tensor/binary"},
    )
    assert remote.status_code == 200
    assert int(remote.headers["x-tiles"]) > 1
    assert remote.headers["shape"] == "[1, 3, 60, 40]"
    assert metric(client, "vqserve_tiles_total", op="decode_tile") > 0
    assert metric(client, "vqserve_batch_size_count", op="decode_tile") > 0  # tiles were batch items


def test_inputs_of_one_tile_are_untouched(make_client: Callable[..., TestClient]) -> None:
    data = image_bytes(random_rgb(32, 24))
    tiled = make_client(**TILED).post("/reconstruct", content=data, headers=PNG)
    plain = make_client(tile_size=0).post("/reconstruct", content=data, headers=PNG)
    assert "x-tiles" not in tiled.headers
    assert tiled.content == plain.content


def test_service_tiles_match_the_models_own_tiling(
    make_client: Callable[..., TestClient], tiny_checkpoint: Path
) -> None:
    """The batched service path computes what `VQModel.enable_tiling` computes (same statistics, same blend)."""
    pixels = random_rgb(96, 64)
    reply = make_client(**TILED).post("/encode", content=image_bytes(pixels), headers=PNG).json()
    model = VQModel.from_pretrained(tiny_checkpoint).enable_tiling(32, 8, preview_side=64)
    with torch.inference_mode():
        x = from_uint8(torch.from_numpy(pixels.copy()).permute(2, 0, 1))[None]
        _, indices = model.quantize(model.encode(x))
    assert float((torch.tensor(reply["indices"]) == indices[0]).float().mean()) > 0.99


def test_tile_batches_fit_the_memory_budget(make_client: Callable[..., TestClient]) -> None:
    """Metrics are process-wide: each check reads what its own request added."""
    data = image_bytes(random_rgb(96, 96))

    def tile_batches(client: TestClient) -> tuple[float, float]:
        """(batches, tiles) of encode_tile added by one reconstruct."""
        before = [metric(client, f"vqserve_batch_size_{kind}", op="encode_tile") for kind in ("count", "sum")]
        assert client.post("/reconstruct", content=data, headers=PNG).status_code == 200
        after = [metric(client, f"vqserve_batch_size_{kind}", op="encode_tile") for kind in ("count", "sum")]
        return after[0] - before[0], after[1] - before[1]

    small_budget = make_client(**TILED, memory_budget_mb=1)  # room for one tile's activations: one tile per batch
    batches, tiles = tile_batches(small_budget)
    assert batches > 1
    assert tiles == batches
    assert metric(small_budget, "vqserve_memory_budget_bytes") == 1 << 20
    # a roomy budget: on CPU a request still runs its tiles one per batch, so that others get in between
    # (tiles of several requests share batches like any items of one shape: tests/service/test_batching.py)
    batches, tiles = tile_batches(make_client(**TILED, max_batch_size=4))
    assert tiles == batches


LARGE = {"tile_size": 32, "tile_overlap": 8, "max_batch_size": 1, "memory_budget_mb": 1}


def test_a_request_past_its_deadline_stops_between_tile_batches(make_client: Callable[..., TestClient]) -> None:
    client = make_client(**LARGE, request_timeout_s=1.0)
    reply = client.post("/reconstruct", content=image_bytes(random_rgb(640, 640)), headers=PNG)
    assert reply.status_code == 504
    settled = metric(client, "vqserve_batch_size_count", op="encode_tile")
    time.sleep(0.5)
    assert metric(client, "vqserve_batch_size_count", op="encode_tile") <= settled + 1  # at most the batch in flight
    assert client.post("/reconstruct", content=image_bytes(random_rgb(16, 16)), headers=PNG).status_code == 200


def test_small_requests_are_served_while_a_large_one_is_in_progress(make_client: Callable[..., TestClient]) -> None:
    client = make_client(**LARGE, request_timeout_s=60.0)
    small = image_bytes(random_rgb(16, 16))
    with ThreadPoolExecutor(2) as pool:
        large = pool.submit(client.post, "/reconstruct", content=image_bytes(random_rgb(512, 512)), headers=PNG)
        started = metric(client, "vqserve_batch_size_count", op="encode_tile")
        deadline = time.monotonic() + 30
        while metric(client, "vqserve_batch_size_count", op="encode_tile") == started and time.monotonic() < deadline:
            time.sleep(0.02)  # until the large request's tiles are being computed
        served = [client.post("/reconstruct", content=small, headers=PNG) for _ in range(3)]
        assert all(r.status_code == 200 for r in served)
        assert not large.done()  # the small ones did not wait for the whole large request
        assert large.result().status_code == 200
    assert Image.open(io.BytesIO(large.result().content)).size == (512, 512)


def test_the_codes_of_a_large_input_are_found_in_bands_with_the_whole_grids_result(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quantization of a large input's latents runs in bands of rows, each a run of its own (so that it never holds
    the engine for long): exactly the codes of one pass over the whole grid, in as many quantize batches as bands."""
    import service.tiles

    client = make_client(**TILED)
    data = image_bytes(random_rgb(96, 80))  # latents 48 x 40 on the f=2 tiny model
    whole = client.post("/encode", params={"return_latents": "true"}, content=data, headers=PNG)
    codes = int(client.get("/models/default").json()["codebook_size"])
    monkeypatch.setattr(service.tiles, "QUANTIZE_BAND_ELEMENTS", 5 * 40 * codes)  # 5 rows a band: 10 bands
    before = metric(client, "vqserve_batch_size_count", op="quantize")
    banded = client.post("/encode", params={"return_latents": "true"}, content=data, headers=PNG)
    assert metric(client, "vqserve_batch_size_count", op="quantize") - before == 10
    assert banded.status_code == whole.status_code == 200
    assert banded.json()["shape"] == whole.json()["shape"] == [48, 40]
    assert banded.json()["indices"] == whole.json()["indices"]
    assert banded.json()["latents"] == whole.json()["latents"]
