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


def act_(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an activation, in place when no autograd graph needs the input (inference): one buffer less."""
    if isinstance(module, nn.SiLU) and not torch.is_grad_enabled():
        return F.silu(x, inplace=True)
    return module(x)


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
        h = act_(self.nonlinearity, _apply_norm(self.norm1, x, zq))
        h = self.conv1(h)
        h = act_(self.nonlinearity, _apply_norm(self.norm2, h, zq))
        h = self.conv2(h)
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return h.add_(shortcut) if not torch.is_grad_enabled() else h + shortcut


class Attention(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection (diffusers' `Attention`).

    Keys: group_norm (or spatial_norm), to_q, to_k, to_v, to_out.0.
    """

    def __init__(self, channels: int, groups: int | None, zq_channels: int | None = None) -> None:
        super().__init__()
        self.spatial_norm = SpatialNorm(channels, zq_channels) if zq_channels is not None else None
        self.group_norm = (
            nn.GroupNorm(num_channels=channels, num_groups=groups, eps=EPS, affine=True) if groups is not None else None
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
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv (diffusers' `Upsample2D`).

    At inference the two are fused (`fuse()`): a 3x3 conv over a nearest-upsampled map equals, for each of the 4
    output phases, a 2x2 conv over the low-resolution map with summed weights. One conv with 4x the output
    channels at the low resolution does 16 multiply-adds per input pixel instead of 36, and the upsampled
    intermediate is never built. Results agree to float rounding.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        # non-persistent: derived from conv, never part of a checkpoint
        self.fused_weight: torch.Tensor | None
        self.fused_bias: torch.Tensor | None
        self.register_buffer("fused_weight", None, persistent=False)
        self.register_buffer("fused_bias", None, persistent=False)

    @torch.no_grad()
    def fuse(self) -> None:
        """Build the phase conv from the current weights (call again after changing them)."""
        w = self.conv.weight  # (C_out, C_in, 3, 3)
        # rows of the 3x3 kernel seen by output row phase a, as taps on input rows (i-1, i) or (i, i+1)
        taps = [(w[:, :, 0], w[:, :, 1] + w[:, :, 2]), (w[:, :, 0] + w[:, :, 1], w[:, :, 2])]
        phases = []
        for a in (0, 1):
            rows = torch.stack(taps[a], dim=2)  # (C_out, C_in, 2, 3)
            for b in (0, 1):
                if b == 0:
                    cols = (rows[..., 0], rows[..., 1] + rows[..., 2])
                else:
                    cols = (rows[..., 0] + rows[..., 1], rows[..., 2])
                phases.append(torch.stack(cols, dim=3))  # (C_out, C_in, 2, 2)
        out_ch, in_ch = w.shape[:2]
        self.fused_weight = torch.stack(phases).reshape(4 * out_ch, in_ch, 2, 2)  # channel = phase * C_out + c
        assert self.conv.bias is not None
        self.fused_bias = self.conv.bias.repeat(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_weight is None or torch.is_grad_enabled():
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, H, W) -> (B, C, 2H, 2W)
        b, _, h, w = x.shape
        # (B, 4C, H+1, W+1): phase (a, c) of output pixel (i, j) sits at (i+a, j+c) in channel block 2a+c
        y = F.conv2d(x, self.fused_weight, self.fused_bias, padding=1)
        y = y.permute(0, 2, 3, 1).reshape(b, h + 1, w + 1, 4, -1)  # a view when y is channels-last
        # interleave the phases straight into channels-last memory: (B, H, 2, W, 2, C)
        out = x.new_empty((b, h, 2, w, 2, y.shape[-1]))
        for a in (0, 1):
            for c in (0, 1):
                out[:, :, a, :, c] = y[:, a : a + h, c : c + w, 2 * a + c]
        return out.view(b, 2 * h, 2 * w, -1).permute(0, 3, 1, 2)  # (B, C, 2H, 2W), channels-last
