"""The checkpoints the repository ships: they load in ours and in diffusers' VQModel with the same outputs, and
reconstruct images they never saw above a PSNR floor (a regression guard set a little under the measured value
recorded in each checkpoint's training.json and model card)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import VQModel as DiffusersVQModel

from model import VQModel
from model.training import card, data
from model.training.evaluate import evaluate
from tests.support.constants import WEIGHTS
from tests.support.reference import model_output

# Floors a little under the measured held-out PSNR (see model/weights/README.md).
PSNR_FLOOR = {"default": 24.7, "digits": 32.5}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def held_out(name: str, model: VQModel) -> tuple[list[str], torch.Tensor]:
    if name == "digits":
        _, images = data.digits(1)
        return ["digits"] * len(images), images
    return data.eval_photos(model.config.in_channels, 256)


@pytest.mark.parametrize("name", ["default", "digits"])
def test_diffusers_loads_it_with_the_same_outputs(name: str) -> None:
    ours = VQModel.from_pretrained(WEIGHTS / name)
    theirs = DiffusersVQModel.from_pretrained(WEIGHTS / name).eval()
    _, images = held_out(name, ours)
    x = images[:2]
    with torch.no_grad():
        latents = ours.encode(x)
        their_latents = theirs.encode(x).latents
        torch.testing.assert_close(latents, their_latents, rtol=1e-4, atol=1e-4)
        _, indices = ours.quantize(latents)
        their_quantized, _, (_, _, their_indices) = theirs.quantize(their_latents)
        assert torch.equal(indices.flatten(), their_indices.flatten())
        torch.testing.assert_close(ours.decode_indices(indices), theirs.decode(their_quantized).sample, atol=1e-4,
                                   rtol=1e-4)  # fmt: skip


def test_default_is_a_small_rgb_f4_model() -> None:
    model = VQModel.from_pretrained(WEIGHTS / "default")
    assert (model.config.in_channels, model.config.out_channels, model.downsample_factor) == (3, 3, 4)
    assert (WEIGHTS / "default" / "diffusion_pytorch_model.safetensors").stat().st_size < 30 * 2**20
    record = json.loads((WEIGHTS / "default" / "training.json").read_text())
    assert record["config"] == model.config.to_dict()
    assert not set(record["data"]["train_images"]) & set(data.HELD_OUT)


def test_digits_mirrors_the_keras_io_vqvae() -> None:
    model = VQModel.from_pretrained(WEIGHTS / "digits")
    assert model.config.in_channels == 1
    assert (model.config.embed_dim, model.codebook_size, model.downsample_factor) == (16, 128, 4)
    with torch.no_grad():
        _, indices = model.quantize(model.encode(torch.zeros(1, 1, 28, 28)))
    assert indices.shape == (1, 7, 7)
    assert (WEIGHTS / "digits" / "reconstructions.png").is_file()


@pytest.mark.parametrize("name", ["default", "digits"])
def test_held_out_psnr_stays_above_the_floor(name: str) -> None:
    model = VQModel.from_pretrained(WEIGHTS / name)
    names, images = held_out(name, model)
    result = evaluate(model, names, images)
    recorded = json.loads((WEIGHTS / name / "training.json").read_text())["evaluation"]
    assert result["psnr_mean"] >= PSNR_FLOOR[name], result
    # the evaluation is deterministic: it reproduces the figure training recorded
    assert result["psnr_mean"] == pytest.approx(recorded["psnr_mean"], abs=0.05)


def test_card_grid_rows_are_inputs_reconstructions_and_code_maps() -> None:
    model = VQModel.from_pretrained(WEIGHTS / "default")
    _, tiles = data.eval_photos(3, 256)
    grid = np.asarray(card.reconstruction_grid(model, tiles[:2]))
    assert grid.shape == (3 * 258 + 2, 2 * 258 + 2, 3)
    first_input = model_output(tiles[:1])[0]
    assert np.array_equal(grid[2:258, 2:258], first_input)
    reconstruction = grid[260:516, 2:258].astype(float)
    assert 0 < np.abs(reconstruction - first_input).mean() < 20  # close to the input, not a copy of it
    code_map = grid[518:774, 2:258]
    assert np.array_equal(code_map[::4, ::4], code_map[3::4, 3::4])  # one colour per 4x4 cell (f = 4)
