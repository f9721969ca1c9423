"""The prior's HTTP contract through the app's real lifespan (`TestClient`) on the tiny checkpoint with a random
prior (`tiny_prior_checkpoint`): /models reports it, /generate and /complete draw what `model.prior.sample` draws
for the same seed and reply in every form, unmasked cells are kept exactly, /encode's `nll_bits` is the prior's
likelihood, a model without a prior answers 422 `no_prior`, and bad bodies are 4xx, never 500."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.prior import PixelCNNPrior, nll_bits, sample
from tests.support.constants import PNG
from tests.support.images import decode_png, png
from tests.support.servers import app_client

JSON = {"accept": "application/json"}
GRID = (4, 4)  # tiny_prior_checkpoint's trained grid: an 8x8 image at TINY_RGB's factor 2


@pytest.fixture(scope="module")
def client(tiny_prior_checkpoint: Path) -> Iterator[TestClient]:
    with app_client(tiny_prior_checkpoint, torch_threads=1) as running:
        yield running


@pytest.fixture(scope="module")
def plain(tiny_checkpoint: Path) -> Iterator[TestClient]:
    """The same VQ model without a prior."""
    with app_client(tiny_checkpoint, torch_threads=1) as running:
        yield running


@pytest.fixture(scope="module")
def prior(tiny_prior_checkpoint: Path) -> PixelCNNPrior:
    torch.set_num_threads(1)
    return PixelCNNPrior.from_pretrained(tiny_prior_checkpoint / "prior")


def grids(reply: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([s["indices"] for s in reply["samples"]])


def images(reply: dict[str, Any]) -> np.ndarray:
    return np.stack([decode_png(base64.b64decode(s["image"])) for s in reply["samples"]])


def test_models_report_the_prior_or_null(client: TestClient, plain: TestClient) -> None:
    info = client.get("/models/default").json()
    assert info["prior"]["num_labels"] == 3
    assert info["prior"]["grid"] == list(GRID)
    assert info["prior"]["codebook_size"] == info["codebook_size"] == 64
    assert info["prior"]["config"]["_class_name"] == "PixelCNNPrior"
    assert client.get("/models").json()["models"] == [info]
    assert plain.get("/models/default").json()["prior"] is None


def test_generate_draws_what_the_prior_draws_for_the_seed(client: TestClient, prior: PixelCNNPrior) -> None:
    body = {"count": 3, "label": 1, "temperature": 0.8, "top_k": 20, "seed": 7}
    first = client.post("/generate", json=body)
    assert first.status_code == 200, first.text
    reply = first.json()
    assert (reply["model"], reply["shape"], reply["seed"]) == ("default", list(GRID), 7)
    assert first.headers["x-seed"] == "7"
    expected = sample(prior, 3, label=1, temperature=0.8, top_k=20, seed=7)
    assert torch.equal(grids(reply), expected)
    assert client.post("/generate", json=body).json() == reply  # the same seed, the same samples and images
    assert not torch.equal(grids(client.post("/generate", json={**body, "seed": 8}).json()), expected)
    # sample b of a call is sample first_sample + b of the seed: a request may be split
    tail = client.post("/generate", json={**body, "count": 2, "first_sample": 1}).json()
    assert torch.equal(grids(tail), expected[1:])
    # unconditional (omitted, null or -1) is one thing, and differs from the label's
    unconditional = sample(prior, 3, label=None, temperature=0.8, top_k=20, seed=7)
    omitted = {k: v for k, v in body.items() if k != "label"}
    for request in (omitted, {**body, "label": None}, {**body, "label": -1}):
        assert torch.equal(grids(client.post("/generate", json=request).json()), unconditional)
    assert not torch.equal(unconditional, expected)


def test_an_omitted_seed_is_random_and_reported(client: TestClient) -> None:
    replies = [client.post("/generate", json={"count": 2}).json() for _ in range(2)]
    assert replies[0]["seed"] != replies[1]["seed"]
    again = client.post("/generate", json={"count": 2, "seed": replies[0]["seed"]}).json()
    assert again["samples"] == replies[0]["samples"]
    empty = client.post("/generate")  # no body at all: every default (one sample, as a PNG)
    assert empty.status_code == 200, empty.text
    assert empty.headers["content-type"] == "image/png"
    assert decode_png(empty.content).shape == (8, 8, 3)
    assert int(empty.headers["x-seed"]) >= 0


def test_generate_replies_by_accept(client: TestClient) -> None:
    body = {"count": 2, "seed": 3}
    reply = client.post("/generate", json=body).json()
    pixels = images(reply)
    assert pixels.shape == (2, 8, 8, 3)
    # each image is its grid decoded
    decoded = client.post("/decode", json={"indices": reply["samples"][1]["indices"]})
    assert np.array_equal(decode_png(decoded.content), pixels[1])
    tensor = client.post("/generate", json=body, headers={"accept": "tensor/binary"})
    assert tensor.status_code == 200
    assert (json.loads(tensor.headers["shape"]), tensor.headers["dtype"]) == ([2, 8, 8, 3], "uint8")
    assert tensor.headers["x-seed"] == "3"
    assert np.array_equal(np.frombuffer(tensor.content, np.uint8).reshape(2, 8, 8, 3), pixels)
    for accept in ({"accept": "image/png"}, {}, {"accept": "*/*"}):  # one sample: a PNG by default
        one = client.post("/generate", json={**body, "count": 1}, headers=accept)
        assert one.headers["content-type"] == "image/png"
        assert np.array_equal(decode_png(one.content), pixels[0])
    for accept in ({}, {"accept": "*/*"}):  # several: JSON by default
        assert client.post("/generate", json=body, headers=accept).json() == reply
    several = client.post("/generate", json=body, headers={"accept": "image/png"})
    assert several.status_code == 406
    assert "application/json" in several.json()["error"]["message"]
    assert client.post("/generate", json=body, headers={"accept": "text/plain"}).status_code == 406


def test_complete_keeps_unmasked_cells_and_redraws_the_rest(client: TestClient, prior: PixelCNNPrior) -> None:
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 64, GRID)
    mask = np.zeros(GRID, dtype=int)
    mask[1:3, 1:4] = 1
    body = {"indices": indices.tolist(), "mask": mask.tolist(), "count": 4, "seed": 11, "label": 2}
    response = client.post("/complete", json=body)
    assert response.status_code == 200, response.text
    drawn = grids(response.json()).numpy()
    assert drawn.shape == (4, *GRID)
    kept = mask == 0
    for grid in drawn:
        assert np.array_equal(grid[kept], indices[kept])  # every unmasked cell exactly
    assert any(not np.array_equal(grid[~kept], indices[~kept]) for grid in drawn)
    expected = sample(prior, 4, label=2, seed=11, indices=torch.from_numpy(indices), mask=torch.from_numpy(mask))
    assert np.array_equal(drawn, expected.numpy())
    # a mask of zeros keeps the grid; the reply is the grid decoded
    same = client.post("/complete", json={**body, "mask": np.zeros(GRID, int).tolist(), "count": 1}, headers=JSON)
    same = same.json()
    assert grids(same).tolist() == [indices.tolist()]
    decoded = client.post("/decode", json={"indices": indices.tolist()})
    assert np.array_equal(images(same)[0], decode_png(decoded.content))
    # any grid shape the VQ model decodes, not only the prior's trained one
    wide_grid = {"indices": [[5] * 6] * 2, "mask": [[0] * 6, [0, 0, 1, 1, 0, 0]]}
    wide = client.post("/complete", json=wide_grid, headers=JSON)
    assert wide.status_code == 200, wide.text
    assert wide.json()["shape"] == [2, 6]
    assert images(wide.json()).shape == (1, 4, 12, 3)


def test_encode_return_nll_is_the_priors_bits_per_code(client: TestClient, prior: PixelCNNPrior) -> None:
    image = png(8, 8, seed=2)
    plain_reply = client.post("/encode", content=image, headers=PNG).json()
    assert "nll_bits" not in plain_reply
    reply = client.post("/encode?return_nll=true", content=image, headers=PNG).json()
    indices = torch.tensor(reply["indices"])[None]
    assert math.isfinite(reply["nll_bits"])
    assert reply["nll_bits"] == pytest.approx(float(nll_bits(prior, indices)[0]), rel=1e-5)
    labelled = client.post("/encode?return_nll=true&label=2", content=image, headers=PNG).json()
    assert labelled["nll_bits"] == pytest.approx(float(nll_bits(prior, indices, torch.tensor([2]))[0]), rel=1e-5)
    assert labelled["nll_bits"] != reply["nll_bits"]
    # a batch: one score per result, in order; the binary reply carries them in a header
    batch = client.post(
        "/encode?return_nll=true",
        files=[("image", ("a.png", image, "image/png")), ("image", ("b.png", png(8, 12, seed=5), "image/png"))],
    ).json()
    scores = [r["nll_bits"] for r in batch["results"]]
    assert scores[0] == pytest.approx(reply["nll_bits"], rel=1e-5)
    assert math.isfinite(scores[1])
    binary = client.post(
        "/encode?return_nll=true", content=image, headers={**PNG, "accept": "application/octet-stream"}
    )
    assert json.loads(binary.headers["x-nll-bits"]) == pytest.approx([reply["nll_bits"]], rel=1e-5)


def test_a_model_without_a_prior_answers_422_no_prior(plain: TestClient) -> None:
    refused = [
        plain.post("/generate", json={"count": 1}),
        plain.post("/complete", json={"indices": [[1, 2]], "mask": [[0, 1]]}),
        plain.post("/encode?return_nll=true", content=png(8, 8), headers=PNG),
    ]
    for response in refused:
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "no_prior"
        assert "prior" in response.json()["error"]["message"]
    assert plain.post("/encode", content=png(8, 8), headers=PNG).status_code == 200


GOOD_GRID = {"indices": [[1, 2, 3, 4]] * 4, "mask": [[0, 1, 1, 0]] * 4}
BAD_GENERATE: list[tuple[Any, int, str]] = [
    ({"count": 0}, 422, "invalid_input"),
    ({"count": 33}, 413, "too_many_images"),  # VQSERVE_MAX_IMAGES_PER_REQUEST (32)
    ({"count": "2"}, 422, "invalid_input"),
    ({"count": 1.5}, 422, "invalid_input"),
    ({"temperature": 0}, 422, "invalid_input"),
    ({"temperature": -1.0}, 422, "invalid_input"),
    ({"temperature": 1e-9}, 422, "invalid_input"),
    ({"temperature": 1000.0}, 422, "invalid_input"),
    ({"temperature": "hot"}, 422, "invalid_input"),
    ({"top_k": 0}, 422, "invalid_input"),
    ({"top_k": 65}, 422, "invalid_input"),  # over the codebook size
    ({"label": 3}, 422, "invalid_label"),  # the prior has 3 classes
    ({"label": -2}, 422, "invalid_input"),
    ({"label": True}, 422, "invalid_input"),
    ({"seed": -1}, 422, "invalid_input"),
    ({"seed": 2**32}, 422, "invalid_input"),
    ({"first_sample": -1}, 422, "invalid_input"),
    ({"surprise": 1}, 422, "invalid_input"),
    ([1, 2], 422, "invalid_input"),
    ("not json", 400, "invalid_json"),
]
BAD_COMPLETE: list[tuple[Any, int, str]] = [
    ({}, 422, "invalid_input"),
    ({"indices": [[1, 2], [3]], "mask": [[0, 1], [1]]}, 422, "invalid_input"),  # ragged
    ({"indices": [[]], "mask": [[]]}, 422, "invalid_input"),
    ({"indices": [], "mask": []}, 422, "invalid_input"),
    ({**GOOD_GRID, "mask": [[0, 1, 1, 0]] * 3}, 422, "invalid_input"),  # not the shape of indices
    ({**GOOD_GRID, "mask": [[0, 2, 1, 0]] * 4}, 422, "invalid_input"),
    ({**GOOD_GRID, "indices": [[1, 2, 3, 64]] * 4}, 422, "invalid_input"),  # out of the codebook
    ({**GOOD_GRID, "indices": [[1, 2, 3, -1]] * 4}, 422, "invalid_input"),
    ({**GOOD_GRID, "indices": [[1, 2, 3, 2**70]] * 4}, 422, "invalid_input"),
    ({**GOOD_GRID, "indices": [[1.5, 2, 3, 4]] * 4}, 422, "invalid_input"),
    ({"indices": [[1]], "mask": [[1]]}, 422, "invalid_input"),  # smaller than the VQ model decodes
    ({**GOOD_GRID, "label": 9}, 422, "invalid_label"),
    ({**GOOD_GRID, "count": 40}, 413, "too_many_images"),
    ("{", 400, "invalid_json"),
    ("", 400, "invalid_json"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        *[("/generate", *case) for case in BAD_GENERATE],
        *[("/complete", *case) for case in BAD_COMPLETE],
    ],
)
def test_bad_bodies_are_4xx_never_500(client: TestClient, path: str, body: Any, status: int, code: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


def test_other_refusals(client: TestClient) -> None:
    form = client.post("/generate", content=b"count=2", headers={"content-type": "application/x-www-form-urlencoded"})
    assert (form.status_code, form.json()["error"]["code"]) == (415, "unsupported_media_type")
    label = client.post("/encode?return_nll=true&label=3", content=png(8, 8), headers=PNG)
    assert (label.status_code, label.json()["error"]["code"]) == (422, "invalid_label")
    assert client.post("/generate?model=nope", json={}).status_code == 404
    # without return_nll the label is not read
    assert client.post("/encode?label=3", content=png(8, 8), headers=PNG).status_code == 200


def test_limits_of_the_settings(tiny_prior_checkpoint: Path) -> None:
    """VQSERVE_MAX_PIXELS bounds the images a completion decodes to; the memory budget, the grid the prior runs on."""
    grid = {"indices": [[1] * 8] * 4, "mask": [[0] * 8] * 4}  # 16x8 = 128 pixels
    with app_client(tiny_prior_checkpoint, torch_threads=1, max_pixels=100) as small:
        response = small.post("/complete", json=grid)
        assert (response.status_code, response.json()["error"]["code"]) == (413, "image_too_large")
        assert small.post("/complete", json={"indices": [[1] * 4] * 4, "mask": [[0] * 4] * 4}).status_code == 200
    with app_client(tiny_prior_checkpoint, torch_threads=1, memory_budget_mb=1) as tight:
        big = 40  # 40x40 cells of the tiny prior need more than 1 MiB of activations (1 KiB a cell)
        response = tight.post("/complete", json={"indices": [[1] * big] * big, "mask": [[0] * big] * big})
        assert (response.status_code, response.json()["error"]["code"]) == (413, "image_too_large")
        assert "VQSERVE_MEMORY_BUDGET_MB" in response.json()["error"]["message"]
        nll = tight.post("/encode?return_nll=true", content=png(80, 80), headers=PNG)  # refused before encoding
        assert (nll.status_code, nll.json()["error"]["code"]) == (413, "image_too_large")


def test_openapi_documents_generation(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/generate", "/complete"):
        operation = schema["paths"][path]["post"]
        assert {"200", "406", "413", "422"} <= set(operation["responses"])
    components = schema["components"]["schemas"]
    assert {"GenerateRequest", "CompleteRequest", "GenerateResponse", "PriorInfo"} <= set(components)
    params = {p["name"] for p in schema["paths"]["/encode"]["post"]["parameters"]}
    assert {"return_nll", "label"} <= params
