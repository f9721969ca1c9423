"""Random-weight test checkpoints on disk, built by one function from named model sizes.

Each size is a module constant of VQModel config fields whose name says what the model is; `build_checkpoint`
saves a seeded random model of that size as a diffusers-style folder (`config.json` and safetensors weights)
that the service, diffusers and the clients all load. Session fixtures in the conftest files call it, and a
fixture name stands for one size and seed everywhere (`tiny_checkpoint` is `TINY_RGB`, seed 0, in every package).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

# RGB in and out, two blocks of 32 channels (downsampling by 2), one layer per block, 4 latent channels and a
# codebook of 64. Fast on one CPU thread; with 32 norm groups of one channel each at the latent resolution, a
# single latent cell (a 1x1 image) is more than the model can compute (`test_hostile_input` checks the refusal).
TINY_RGB: Mapping[str, Any] = MappingProxyType(
    {
        "block_out_channels": (32, 32),
        "layers_per_block": 1,
        "latent_channels": 4,
        "num_vq_embeddings": 64,
        "norm_num_groups": 32,
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
    }
)

# `TINY_RGB` with one channel in and out: serves and decodes mode L images.
TINY_GRAY: Mapping[str, Any] = MappingProxyType({**TINY_RGB, "in_channels": 1, "out_channels": 1})

# `TINY_RGB` with 64 channels per block (two per norm group), so that one latent cell (a 1x1 image) is
# computable, and without mid-block attention, whose cost grows with the square of the latent cells (a 1x100000
# image would take 10 s on one CPU thread). The reliability suite's model: hostile sizes stay cheap.
TINY_RGB_64CH_NO_ATTENTION: Mapping[str, Any] = MappingProxyType(
    {**TINY_RGB, "block_out_channels": (64, 64), "mid_block_add_attention": False}
)

# `TINY_RGB` with MoVQ's spatial norm (decoder norms conditioned on the quantized latents), as Kandinsky's is.
TINY_RGB_SPATIAL_NORM: Mapping[str, Any] = MappingProxyType({**TINY_RGB, "norm_type": "spatial"})

# The smallest useful RGB model: two blocks of 8 channels in 4 norm groups, 4 latent channels, 16 codes. For the
# installed-service check, where only the wiring counts.
TINY_RGB_8CH: Mapping[str, Any] = MappingProxyType(
    {
        "block_out_channels": (8, 8),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "norm_num_groups": 4,
        "latent_channels": 4,
        "num_vq_embeddings": 16,
        "sample_size": 16,
    }
)


def build_checkpoint(path: Path, size: Mapping[str, Any] = TINY_RGB, seed: int = 0) -> Path:
    """Save a VQModel of `size` with random weights drawn after `torch.manual_seed(seed)` to `path`; return `path`."""
    import torch  # imported here, so that importing this module (as the offline deploy checks do) stays cheap

    from model import VQModel

    torch.manual_seed(seed)
    VQModel(**size).save_pretrained(path)
    return path
