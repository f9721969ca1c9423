"""Named model configs and their training defaults, so that `--preset NAME` reproduces a shipped checkpoint.

`default` is the RGB f=4 model the service ships: sized to learn quickly on a 2-core CPU (narrow full-resolution
layers, no attention) and to reconstruct a 256x256 photo well under a second there, with a large codebook of
low-dimensional codes so the quantizer keeps enough detail for photos. `digits` mirrors the keras-io VQ-VAE
(grayscale, 16-dim latents, 128 codes). `tiny` exists for tests: it trains a step in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# OpenCV's sample photos from Debian's opencv-doc package, unpacked by `make train-data` (see model/weights/README.md)
OPENCV_PHOTOS = "runs/data/opencv-doc"

_F4_BLOCKS = {
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
}


@dataclass(frozen=True)
class Preset:
    """A model config (diffusers' field names) plus the training settings it was tuned with."""

    config: dict[str, Any]
    data: str = "photos"  # "photos", "digits" or a folder of images
    steps: int = 1000
    batch_size: int = 8
    crop: int = 64
    lr: float = 1e-3
    eval_every: int = 250
    eval_crop: int = 256
    vq_warmup: int = 200  # steps trained without quantization before the codebook is seeded from latents
    gray_weight: float = 1.0  # sampling weight of grayscale photos relative to colour ones
    permute_channels: float = 0.0  # probability of shuffling the RGB channels of a crop
    ema_decay: float = 0.0  # > 0: evaluate and ship an exponential moving average of the weights
    restart_every: int = 50  # steps between dead-code restarts (a code unused that long is re-seeded)
    restarts_until: float = 1.0  # fraction of the run after which codes are left alone to settle
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "default": Preset(
        config={
            **_F4_BLOCKS,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [32, 64, 128],
            "layers_per_block": 2,
            "norm_num_groups": 16,
            "latent_channels": 4,
            "vq_embed_dim": 4,
            "num_vq_embeddings": 8192,
            "mid_block_add_attention": False,
            "sample_size": 256,
        },
        data=f"photos,{OPENCV_PHOTOS}",
        steps=18000,
        batch_size=8,
        crop=64,
        lr=1e-3,
        eval_every=500,
        vq_warmup=300,
        gray_weight=0.2,  # half of skimage's photos are grayscale: they taught the first runs to drop colour
        permute_channels=0.5,
        ema_decay=0.999,
        restart_every=200,  # every 50 steps re-seeded ~1700 rarely used codes each time: churn late in training
        restarts_until=0.8,
    ),
    "digits": Preset(
        config={
            **_F4_BLOCKS,
            "in_channels": 1,
            "out_channels": 1,
            "block_out_channels": [16, 32, 32],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "latent_channels": 16,
            "vq_embed_dim": 16,
            "num_vq_embeddings": 128,
            "mid_block_add_attention": False,
            "sample_size": 28,
        },
        data="digits",
        steps=1400,  # 30 epochs of the 1,497 training digits at batch 32
        batch_size=32,
        crop=28,
        lr=1e-3,
        eval_every=200,
        eval_crop=28,
        vq_warmup=100,
    ),
    "tiny": Preset(
        config={
            **_F4_BLOCKS,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [8, 16, 16],
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "latent_channels": 4,
            "vq_embed_dim": 4,
            "num_vq_embeddings": 64,
            "mid_block_add_attention": False,
            "sample_size": 32,
        },
        steps=30,
        batch_size=4,
        crop=32,
        lr=3e-3,
        eval_every=15,
        eval_crop=64,
        vq_warmup=5,
    ),
}
