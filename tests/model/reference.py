"""Shared helpers for parity tests: diffusers reference models with non-trivial weights, and test images."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from diffusers import VQModel as DiffusersVQModel

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # copies of ../shared/reference/configs
REAL_CONFIGS = (
    "ldm-celebahq-256-vqvae.json",
    "kandinsky-2-2-movq.json",
    "amused-vqvae.json",
    "vq-diffusion-ithq-vqvae.json",
)


def real_config(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / name).read_text())


def narrow(config: dict[str, Any], width: int = 32, codes: int = 64) -> dict[str, Any]:
    """The same architecture with 32-channel blocks, 1 layer per block and a small codebook: fast on CPU."""
    out = {k: v for k, v in config.items() if not k.startswith("_")}
    out["block_out_channels"] = [width] * len(config["block_out_channels"])
    out["layers_per_block"] = 1
    out["norm_num_groups"] = min(config.get("norm_num_groups", 32), width)
    out["num_vq_embeddings"] = codes
    if out.get("latent_channels", 3) > 16:
        out["latent_channels"] = 16
    if out.get("vq_embed_dim") and out["vq_embed_dim"] != config.get("latent_channels"):
        out["vq_embed_dim"] = 8  # keep vq_embed_dim != latent_channels where the real config has it
    elif out.get("vq_embed_dim"):
        out["vq_embed_dim"] = out["latent_channels"]
    return out


def sample_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth, structured images in [-1, 1]: gradients and waves, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    freq = 1 + 6 * torch.rand(batch, channels, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(batch, channels, 1, 1, generator=g)
    img = 0.6 * torch.sin(freq * (xs + 0.7 * ys) * math.pi + phase) + 0.3 * (xs - ys)
    img = img + 0.05 * torch.randn(batch, channels, height, width, generator=g)
    return img.clamp(-1, 1)


@torch.no_grad()
def make_reference(config: dict[str, Any], seed: int = 0) -> DiffusersVQModel:
    """A diffusers VQModel whose weights make index parity meaningful.

    Random init leaves norms at (1, 0) and a codebook far from the latents (uniform in +-1/K), so every latent
    maps to a handful of codes. Perturb every norm, then draw the codebook from real latents plus noise.
    """
    torch.manual_seed(seed)
    model = DiffusersVQModel(**config).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm) and module.affine:
            module.weight.copy_(1 + 0.2 * torch.randn_like(module.weight))
            module.bias.copy_(0.1 * torch.randn_like(module.bias))
    in_ch = config.get("in_channels", 3)
    f = 2 ** (len(config["block_out_channels"]) - 1)
    latents = model.encode(sample_images(2, in_ch, 8 * f, 8 * f, seed=seed + 1)).latents  # (2, D, 8, 8)
    vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    codebook = model.quantize.embedding.weight
    picks = torch.randint(0, vectors.shape[0], (codebook.shape[0],))
    spread = vectors.std() * 0.3
    codebook.copy_(vectors[picks] + spread * torch.randn_like(codebook))
    return model
