"""Parity with taming-transformers' own code: random-weight taming VQGANs at narrow widths of the real configs
(ImageNet f16 with 1024 / 16384 codes, latent-diffusion VQ-f4 and VQ-f8), saved as the originals are, converted,
and compared with taming's forward pass: latents, every index, decoded images; through our VQModel, the served
(optimized) model and diffusers' `VQModel.from_pretrained` on the converted directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import VQModel as DiffusersVQModel
from safetensors.torch import load_file

from model import VQModel
from model.convert import taming_config
from tests.support.taming import REAL_FAMILIES, TamingVQGAN, family, make_taming, save_ldm, save_taming

from .reference import sample_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ATOL = 1e-4
SIDE = {"imagenet-f16-1024": 64, "imagenet-f16-16384": 64, "ldm-vq-f4": 48, "ldm-vq-f8": 64}


@torch.no_grad()
def expected(reference: TamingVQGAN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, quant, indices = reference.encode(x)
    return h, indices, reference.decode(quant)


@torch.no_grad()
def assert_matches_taming(ours: VQModel, reference: TamingVQGAN, x: torch.Tensor) -> None:
    h_ref, idx_ref, y_ref = expected(reference, x)
    assert len(idx_ref.unique()) >= 8, "too few distinct codes for index parity to mean much"
    h = ours.encode(x)
    torch.testing.assert_close(h, h_ref, atol=ATOL, rtol=0)
    quantized, indices = ours.quantize(h)
    assert torch.equal(indices, idx_ref)
    torch.testing.assert_close(ours.decode(h), y_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.decode_indices(idx_ref), y_ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(REAL_FAMILIES))
def test_taming_checkpoint_matches_taming(name: str, tmp_path: Path) -> None:
    fam = family(name)
    reference = make_taming(fam)
    ckpt, config = save_taming(reference, fam, tmp_path / name)
    x = sample_images(2, 3, SIDE[name], SIDE[name], seed=7)

    ours = VQModel.from_taming(ckpt, config)
    assert_matches_taming(ours, reference, x)
    served = VQModel.from_taming(ckpt, config).optimize_for_inference()  # fused upsampling, channels-last
    assert_matches_taming(served, reference, x)


@pytest.mark.parametrize("name", ["ldm-vq-f4", "ldm-vq-f8"])
def test_full_latent_diffusion_checkpoint_matches_taming(name: str, tmp_path: Path) -> None:
    """`first_stage_model.` weights of a whole LDM checkpoint, UNet / EMA / schedule entries beside them."""
    fam = family(name)
    reference = make_taming(fam, seed=3)
    ckpt, config = save_ldm(reference, fam, tmp_path, scale_factor=0.75)
    ours = VQModel.from_taming(ckpt, config)
    assert ours.config.scaling_factor == 0.75
    assert_matches_taming(ours, reference, sample_images(2, 3, 64, 64, seed=8))


def test_config_mapping_of_the_real_imagenet_f16() -> None:
    """The full-width ImageNet f16 YAML (attention at 16 = the lowest of five levels) maps field by field."""
    data = {
        "model": {
            "target": "taming.models.vqgan.VQModel",
            "params": {
                "embed_dim": 256,
                "n_embed": 16384,
                "ddconfig": {
                    "double_z": False,
                    "z_channels": 256,
                    "resolution": 256,
                    "in_channels": 3,
                    "out_ch": 3,
                    "ch": 128,
                    "ch_mult": [1, 1, 2, 2, 4],
                    "num_res_blocks": 2,
                    "attn_resolutions": [16],
                    "dropout": 0.0,
                },
            },
        }
    }
    config = taming_config.to_vqmodel_config(data)
    assert config.block_out_channels == (128, 128, 256, 256, 512)
    assert config.down_block_types == ("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",)
    assert config.up_block_types == ("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4
    assert (config.layers_per_block, config.latent_channels, config.vq_embed_dim) == (2, 256, 256)
    assert (config.num_vq_embeddings, config.sample_size, config.norm_num_groups) == (16384, 256, 32)
    assert config.mid_block_add_attention
    assert config.scaling_factor == 1.0
    assert config.act_fn == "silu"


@torch.no_grad()
def test_cli_convert_writes_what_diffusers_loads(tmp_path: Path) -> None:
    """`vqserve convert` in a subprocess; diffusers' own VQModel then matches taming's forward pass."""
    fam = family("imagenet-f16-1024")
    reference = make_taming(fam, seed=1)
    ckpt, config = save_taming(reference, fam, tmp_path / "vqgan_imagenet_f16_1024")
    out = tmp_path / "converted"
    command = [sys.executable, "-m", "service.cli", "convert", "--format", "taming"]
    result = subprocess.run(
        [*command, "--checkpoint", str(ckpt), "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one torch thread, as the tests in this process run
    )
    assert result.returncode == 0, result.stderr
    assert "a 256x256 image encodes to 16x16 indices, latents (16, 16, 16)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((out / "config.json").read_text())["_class_name"] == "VQModel"
    assert not any(k.startswith("loss.") for k in load_file(str(out / "diffusion_pytorch_model.safetensors")))

    x = sample_images(2, 3, 64, 64, seed=9)
    h_ref, idx_ref, y_ref = expected(reference, x)
    theirs = DiffusersVQModel.from_pretrained(out).eval()
    h = theirs.encode(x).latents
    torch.testing.assert_close(h, h_ref, atol=ATOL, rtol=0)
    _, _, (_, _, indices) = theirs.quantize(h)
    assert torch.equal(indices.view_as(idx_ref), idx_ref)
    torch.testing.assert_close(theirs.decode(h).sample, y_ref, atol=ATOL, rtol=0)
    assert_matches_taming(VQModel.from_pretrained(out), reference, x)

    again = subprocess.run(
        [*command, "--checkpoint", str(ckpt), "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one torch thread, as the tests in this process run
    )
    assert again.returncode == 2
    assert "not an empty directory" in again.stderr


def test_cli_convert_help_describes_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "convert", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for words in ("--format {taming}", "--checkpoint", "--config", "--out", "weights_only=True", "first_stage_model"):
        assert words in result.stdout


def test_directory_holding_the_pair_loads_converted(tmp_path: Path) -> None:
    """`from_pretrained` (and so the service) on a directory with just the .ckpt and the .yaml."""
    fam = family("ldm-vq-f8")
    reference = make_taming(fam, seed=2)
    ckpt, config = save_taming(reference, fam, tmp_path / "logs")
    served = tmp_path / "served"
    served.mkdir()
    ckpt.rename(served / "last.ckpt")
    config.rename(served / "model.yaml")
    assert_matches_taming(VQModel.from_pretrained(served), reference, sample_images(1, 3, 64, 64, seed=4))
