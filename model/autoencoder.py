"""The encoder and decoder stacks of a VQModel, laid out exactly as diffusers' `Encoder` and `Decoder`.

Key layout (what checkpoints hold): `conv_in`, `down_blocks.i.{resnets,attentions,downsamplers}` or
`up_blocks.i.{resnets,attentions,upsamplers}`, `mid_block.{resnets,attentions}`, `conv_norm_out`, `conv_out`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import VQModelConfig
from .layers import EPS, Attention, Downsample, ResnetBlock, SpatialNorm, Upsample


class DownBlock(nn.Module):
    """`DownEncoderBlock2D` / `AttnDownEncoderBlock2D`: resnets (each followed by attention if asked), downsample."""

    def __init__(
        self, in_ch: int, out_ch: int, n_layers: int, cfg: VQModelConfig, attention: bool, downsample: bool
    ) -> None:
        super().__init__()
        g, act = cfg.norm_num_groups, cfg.act_fn
        self.resnets = nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, g, act) for i in range(n_layers))
        self.attentions = nn.ModuleList(Attention(out_ch, g) for _ in range(n_layers)) if attention else None
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpBlock(nn.Module):
    """`UpDecoderBlock2D` / `AttnUpDecoderBlock2D`; with spatial norm every norm is conditioned on `zq`."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        n_layers: int,
        cfg: VQModelConfig,
        attention: bool,
        upsample: bool,
        zq_channels: int | None,
    ) -> None:
        super().__init__()
        g, act = cfg.norm_num_groups, cfg.act_fn
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, g, act, zq_channels) for i in range(n_layers)
        )
        attn_groups = None if zq_channels is not None else g
        self.attentions = (
            nn.ModuleList(Attention(out_ch, attn_groups, zq_channels) for _ in range(n_layers)) if attention else None
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, zq)
            if self.attentions is not None:
                x = self.attentions[i](x, zq)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """`UNetMidBlock2D`: resnet, (attention), resnet at the lowest resolution."""

    def __init__(self, channels: int, cfg: VQModelConfig, zq_channels: int | None) -> None:
        super().__init__()
        g, act = cfg.norm_num_groups, cfg.act_fn
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, g, act, zq_channels) for _ in range(2))
        attn_groups = None if zq_channels is not None else g
        self.attentions = (
            nn.ModuleList([Attention(channels, attn_groups, zq_channels)]) if cfg.mid_block_add_attention else None
        )

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        x = self.resnets[0](x, zq)
        if self.attentions is not None:
            x = self.attentions[0](x, zq)
        return self.resnets[1](x, zq)


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> latents (B, latent_channels, H/f, W/f)."""

    def __init__(self, cfg: VQModelConfig) -> None:
        super().__init__()
        chans = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(
                chans[max(i - 1, 0)],
                chans[i],
                cfg.layers_per_block,
                cfg,
                attention=block_type == "AttnDownEncoderBlock2D",
                downsample=i < len(chans) - 1,
            )
            for i, block_type in enumerate(cfg.down_block_types)
        )
        self.mid_block = MidBlock(chans[-1], cfg, zq_channels=None)
        self.conv_norm_out = nn.GroupNorm(num_channels=chans[-1], num_groups=cfg.norm_num_groups, eps=EPS)
        self.conv_act = nn.SiLU()  # diffusers uses SiLU here whatever act_fn says
        self.conv_out = nn.Conv2d(chans[-1], cfg.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents (B, latent_channels, h, w) -> image (B, out_channels, h*f, w*f)."""

    def __init__(self, cfg: VQModelConfig) -> None:
        super().__init__()
        chans = tuple(reversed(cfg.block_out_channels))
        zq = cfg.latent_channels if cfg.norm_type == "spatial" else None
        self.spatial = zq is not None
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], kernel_size=3, padding=1)
        self.mid_block = MidBlock(chans[0], cfg, zq_channels=zq)
        self.up_blocks = nn.ModuleList(
            UpBlock(
                chans[max(i - 1, 0)],
                chans[i],
                cfg.layers_per_block + 1,
                cfg,
                attention=block_type == "AttnUpDecoderBlock2D",
                upsample=i < len(chans) - 1,
                zq_channels=zq,
            )
            for i, block_type in enumerate(cfg.up_block_types)
        )
        self.conv_norm_out: nn.Module = (
            SpatialNorm(chans[-1], zq)
            if zq is not None
            else nn.GroupNorm(num_channels=chans[-1], num_groups=cfg.norm_num_groups, eps=EPS)
        )
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[-1], cfg.out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        """`zq` is the quantized latents, needed only by spatial norms."""
        if self.spatial and zq is None:
            raise ValueError("a decoder with spatial norms needs the quantized latents `zq`")
        zq = zq if self.spatial else None
        x = self.conv_in(x)
        x = self.mid_block(x, zq)
        for block in self.up_blocks:
            x = block(x, zq)
        x = self.conv_norm_out(x, zq) if self.spatial else self.conv_norm_out(x)
        return self.conv_out(self.conv_act(x))
