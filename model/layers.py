"""Building blocks of the VQModel encoder and decoder, with diffusers' parameter names.

Each module mirrors one diffusers module (`ResnetBlock2D`, `ResnetBlockCondNorm2D`, `Attention` with
`AttnProcessor2_0`, `SpatialNorm`, `Downsample2D`, `Upsample2D`) so that state-dict keys match one to one; only
the inference-time behaviour is reproduced (no dropout, no time embeddings, no gradient checkpointing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # every norm of the VQ encoder/decoder uses it


def activation(name: str) -> nn.Module:
    """diffusers' `get_activation` for the names a VQModel config may hold."""
    table: dict[str, type[nn.Module]] = {
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "mish": nn.Mish,
        "gelu": nn.GELU,
        "relu": nn.ReLU,
    }
    return table[name]()


class SpatialNorm(nn.Module):
    """Group norm whose scale and shift come from the quantized latents (MoVQ, arXiv:2209.09002)."""

    def __init__(self, f_channels: int, zq_channels: int) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=32, eps=EPS, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")  # (B, C_zq, h, w) -> (B, C_zq, H, W)
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


def _norm(channels: int, groups: int, zq_channels: int | None) -> nn.Module:
    """The bare norm module, so that keys read `norm1.weight` (group) or `norm1.conv_y.weight` (spatial)."""
    if zq_channels is not None:
        return SpatialNorm(channels, zq_channels)
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=EPS, affine=True)


def _apply_norm(norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    if isinstance(norm, SpatialNorm):
        assert zq is not None, "a spatial norm needs the quantized latents"
        return norm(x, zq)
    return norm(x)


class ResnetBlock(nn.Module):
    """Pre-norm residual block: norm, act, conv, norm, act, conv, plus a 1x1 shortcut when widths differ.

    `zq_channels` set makes both norms spatial (diffusers' `ResnetBlockCondNorm2D`), else they are group norms
    (`ResnetBlock2D`). Keys: norm1, conv1, norm2, conv2, conv_shortcut.
    """

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, act_fn: str, zq_channels: int | None = None
    ) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups, zq_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _norm(out_channels, groups, zq_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = activation(act_fn)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.nonlinearity(_apply_norm(self.norm1, x, zq))
        h = self.conv1(h)
        h = self.nonlinearity(_apply_norm(self.norm2, h, zq))
        h = self.conv2(h)
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class Attention(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection (diffusers' `Attention`).

    Keys: group_norm (or spatial_norm), to_q, to_k, to_v, to_out.0.
    """

    def __init__(self, channels: int, groups: int | None, zq_channels: int | None = None) -> None:
        super().__init__()
        self.spatial_norm = SpatialNorm(channels, zq_channels) if zq_channels is not None else None
        self.group_norm = (
            nn.GroupNorm(num_channels=channels, num_groups=groups, eps=EPS, affine=True)
            if groups is not None
            else None
        )
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        residual = x
        if self.spatial_norm is not None:
            assert zq is not None, "a spatial norm needs the quantized latents"
            x = self.spatial_norm(x, zq)
        b, c, h, w = x.shape
        if self.group_norm is not None:
            x = self.group_norm(x)
        tokens = x.reshape(b, c, h * w).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)

        # one head of width C
        q = self.to_q(tokens).unsqueeze(1)  # (B, 1, HW, C)
        k = self.to_k(tokens).unsqueeze(1)
        v = self.to_v(tokens).unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B, HW, C)
        out = self.to_out[0](out)

        out = out.transpose(1, 2).reshape(b, c, h, w)  # (B, HW, C) -> (B, C, H, W)
        return out + residual


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom by one (diffusers' `Downsample2D`, padding=0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv (diffusers' `Upsample2D`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, H, W) -> (B, C, 2H, 2W)
