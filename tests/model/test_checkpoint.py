"""Round trips and checkpoint errors of our own model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import CheckpointError, VQModel

from .reference import make_reference, sample_images
from .test_parity import VARIANTS


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt")
    make_reference(VARIANTS["spatial-attention"]).save_pretrained(path)
    return path


def test_decode_indices_equals_decoding_quantized_latents(trained_like: Path) -> None:
    model = VQModel.from_pretrained(trained_like)
    with torch.inference_mode():
        quantized, indices = model.quantize(model.encode(sample_images(2, 3, 32, 32)))
        assert torch.equal(model.decode_indices(indices), model.decode(quantized, force_not_quantize=True))


def test_save_load_same_outputs(trained_like: Path, tmp_path: Path) -> None:
    model = VQModel.from_pretrained(trained_like)
    model.save_pretrained(tmp_path)
    again = VQModel.from_pretrained(tmp_path)
    images = sample_images(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(images), again(images))


def test_dtype_and_device_on_load(trained_like: Path) -> None:
    model = VQModel.from_pretrained(trained_like, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.device.type == "cpu"
    with torch.inference_mode():
        out = model.decode_indices(torch.zeros(1, 4, 4, dtype=torch.long))
    assert out.dtype == torch.bfloat16


def test_missing_weights_file(tmp_path: Path, trained_like: Path) -> None:
    (tmp_path / "config.json").write_text((trained_like / "config.json").read_text())
    with pytest.raises(CheckpointError, match="neither"):
        VQModel.from_pretrained(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        VQModel.from_pretrained(tmp_path / "nope")


def test_mismatched_keys_are_named(tmp_path: Path, trained_like: Path) -> None:
    (tmp_path / "config.json").write_text((trained_like / "config.json").read_text())
    state = load_file(str(trained_like / "diffusion_pytorch_model.safetensors"))
    state.pop("quant_conv.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"missing keys \['quant_conv.weight'\].*unexpected keys \['extra.weight'\]"
    ):
        VQModel.from_pretrained(tmp_path)


def test_bin_with_pickled_code_is_refused(tmp_path: Path, trained_like: Path) -> None:
    """weights_only loading refuses arbitrary objects in a .bin file."""
    (tmp_path / "config.json").write_text((trained_like / "config.json").read_text())
    torch.save({"weights": Path("x")}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(Exception, match="[Ww]eights only"):
        VQModel.from_pretrained(tmp_path)
