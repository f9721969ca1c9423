"""taming-transformers' own modules as the reference: random-weight VQGANs at narrow widths of the real configs,
saved as the originals are (a Lightning `.ckpt` and the YAML taming / latent-diffusion write).

`TamingVQGAN` holds taming's `Encoder`, `Decoder` and `VectorQuantizer2` (from the `taming-transformers-rom1504`
package) plus the two 1x1 convs, named and wired as `taming.models.vqgan.VQModel` does; that class itself
subclasses a Lightning module, which the reference does not need.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from model.pixels import from_uint8
from tests.support.images import random_rgb

# The real configs (taming's vqgan_imagenet_f16_1024 / _16384 model.yaml, latent-diffusion's
# models/first_stage_models/vq-f4 and vq-f8 config.yaml) with the widths divided: ch 128 -> 32, codebooks and
# z_channels scaled down. Levels, resolutions, attention placement and resnets per level are the real ones.
_DDCONFIG = {"double_z": False, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32, "num_res_blocks": 2}
REAL_FAMILIES: dict[str, dict[str, Any]] = {
    "imagenet-f16-1024": {
        "target": "taming.models.vqgan.VQModel",
        "embed_dim": 16,
        "n_embed": 64,  # 1024 / 16
        "ddconfig": {**_DDCONFIG, "z_channels": 16, "ch_mult": [1, 1, 2, 2, 4], "attn_resolutions": [16]},
    },
    "imagenet-f16-16384": {
        "target": "taming.models.vqgan.VQModel",
        "embed_dim": 16,
        "n_embed": 1024,  # 16384 / 16
        "ddconfig": {**_DDCONFIG, "z_channels": 16, "ch_mult": [1, 1, 2, 2, 4], "attn_resolutions": [16]},
    },
    "ldm-vq-f4": {
        "target": "ldm.models.autoencoder.VQModel",
        "embed_dim": 3,
        "n_embed": 512,  # 8192 / 16
        "ddconfig": {**_DDCONFIG, "z_channels": 3, "ch_mult": [1, 2, 4], "attn_resolutions": []},
    },
    "ldm-vq-f8": {
        "target": "ldm.models.autoencoder.VQModel",
        "embed_dim": 4,
        "n_embed": 1024,  # 16384 / 16
        "ddconfig": {**_DDCONFIG, "z_channels": 4, "ch_mult": [1, 2, 2, 4], "attn_resolutions": [32]},
    },
}
LOSS_CONFIG = {
    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0, "disc_weight": 0.75},
}


class TamingVQGAN(nn.Module):
    """taming's VQModel without Lightning: the same submodules, names and encode / decode."""

    def __init__(self, family: dict[str, Any]) -> None:
        super().__init__()
        dd = family["ddconfig"]
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer2(family["n_embed"], family["embed_dim"], beta=0.25)
        self.quant_conv = nn.Conv2d(dd["z_channels"], family["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(family["embed_dim"], dd["z_channels"], 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre-quantization latents h, quantized latents, indices (B, h, w))."""
        h = self.quant_conv(self.encoder(x))
        quant, _, (_, _, indices) = self.quantize(h)
        return h, quant, indices.view(h.shape[0], h.shape[2], h.shape[3])

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))


def rgb_batch(batch: int, side: int, seed: int = 0) -> torch.Tensor:
    """Smooth random RGB images (B, 3, side, side) in [-1, 1], normalised as the service does."""
    images = [torch.from_numpy(random_rgb(side, side, seed=seed + i)).permute(2, 0, 1) for i in range(batch)]
    return from_uint8(torch.stack(images))


@torch.no_grad()
def make_taming(family: dict[str, Any], seed: int = 0) -> TamingVQGAN:
    """Random weights that make index parity meaningful: norms perturbed from (1, 0), the codebook drawn from the
    model's own latents plus noise (taming's uniform +-1/K init would send every latent to a few codes)."""
    torch.manual_seed(seed)
    model = TamingVQGAN(family).eval()
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.weight.copy_(1 + 0.2 * torch.randn_like(module.weight))
            module.bias.copy_(0.1 * torch.randn_like(module.bias))
    f = 2 ** (len(family["ddconfig"]["ch_mult"]) - 1)
    latents = model.quant_conv(model.encoder(rgb_batch(2, 8 * f, seed=seed + 1)))
    vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    codebook = model.quantize.embedding.weight
    picks = torch.randint(0, vectors.shape[0], (codebook.shape[0],))
    codebook.copy_(vectors[picks] + 0.3 * vectors.std() * torch.randn_like(codebook))
    return model


def taming_yaml(family: dict[str, Any]) -> dict[str, Any]:
    """The model.yaml taming writes next to its checkpoints (configs/model.yaml)."""
    params = {
        "embed_dim": family["embed_dim"],
        "n_embed": family["n_embed"],
        "ddconfig": {**family["ddconfig"], "dropout": 0.0},
        "lossconfig": LOSS_CONFIG,
    }
    return {"model": {"base_learning_rate": 4.5e-06, "target": family["target"], "params": params}}


def ldm_yaml(family: dict[str, Any], scale_factor: float) -> dict[str, Any]:
    """A full latent-diffusion config, the VQ autoencoder nested as its first stage."""
    first_stage = taming_yaml(family)["model"]["params"]
    first_stage["lossconfig"] = {"target": "torch.nn.Identity"}
    return {
        "model": {
            "base_learning_rate": 2.0e-06,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.0195,
                "image_size": 64,
                "channels": family["embed_dim"],
                "scale_factor": scale_factor,
                "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {}},
                "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": first_stage},
                "cond_stage_config": "__is_unconditional__",
            },
        }
    }


_LIGHTNING = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
# A stand-in for Lightning's ModelCheckpoint callback class (Lightning itself is not installed).
ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": _LIGHTNING[-1]})


@contextmanager
def lightning_modules() -> Iterator[None]:
    """`pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` importable while the block runs, so that
    torch.save pickles a callback state keyed by that class, as Lightning's checkpoints are; gone afterwards."""
    saved = {name: sys.modules.get(name) for name in _LIGHTNING}
    leaf = types.ModuleType(_LIGHTNING[-1])
    leaf.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]
    try:
        for name in _LIGHTNING[:-1]:
            sys.modules[name] = types.ModuleType(name)
        sys.modules[_LIGHTNING[-1]] = leaf
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def lightning_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What Lightning's trainer saves around a state dict: step counters, a callback state keyed by its class,
    hyper-parameters as a Namespace, optimizer states."""
    return {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "x.ckpt"}},
        "hyper_parameters": argparse.Namespace(lr=4.5e-06),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-06}]}],
        "state_dict": state,
    }


def save_lightning(obj: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with lightning_modules():
        torch.save(obj, path)
    return path


def training_entries() -> dict[str, torch.Tensor]:
    """Loss-module entries a trained taming checkpoint also holds (LPIPS, discriminator), to be dropped."""
    return {
        "loss.logvar": torch.zeros(()),
        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(64, 3, 3, 3),
        "loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4),
    }


def save_taming(model: TamingVQGAN, family: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """taming's log layout: checkpoints/last.ckpt (Lightning) and configs/model.yaml."""
    state = {**model.state_dict(), **training_entries()}
    ckpt = save_lightning(lightning_checkpoint(state), root / "checkpoints" / "last.ckpt")
    config = root / "configs" / "model.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(taming_yaml(family)))
    return ckpt, config


def save_ldm(model: TamingVQGAN, family: dict[str, Any], root: Path, scale_factor: float) -> tuple[Path, Path]:
    """A full latent-diffusion checkpoint: the autoencoder under `first_stage_model.`, beside a UNet, an EMA copy
    and schedule buffers; and its config."""
    state = {f"first_stage_model.{k}": v for k, v in model.state_dict().items()}
    state |= {
        "betas": torch.linspace(0.0015, 0.0195, 10),
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(32, family["embed_dim"], 3, 3),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.diffusion_modelinput_blocks00weight": torch.randn(32, family["embed_dim"], 3, 3),
    }
    root.mkdir(parents=True, exist_ok=True)
    ckpt = save_lightning(lightning_checkpoint(state), root / "model.ckpt")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(ldm_yaml(family, scale_factor)))
    return ckpt, config


def family(name: str) -> dict[str, Any]:
    return copy.deepcopy(REAL_FAMILIES[name])
