"""Tiled encode and decode: images of any size in bounded memory, with GroupNorm statistics shared by all tiles.

Why shared statistics: every GroupNorm normalises with statistics over the *whole* feature map, so a tile
normalised with its own statistics is a different function (naive tiling cost ~10 dB against the untiled output
on the shipped model, issue 15). Here a cheap preview pass (the input subsampled to at most `preview_side` per
side) records each norm's per-group mean and variance, and every tile is normalised with those: each tile is then
the same fixed function of its pixels, neighbouring tiles agree up to the edge effects of the receptive field (and
the tile-local mid-block attention), and linear blending across the overlap hides those.

Geometry is in latent cells, so that every tile edge falls on the downsample factor: an image tile of `tile`
pixels is a latent tile of `tile / f` cells. An input no larger than one tile never comes here.
"""

from __future__ import annotations

import math
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .config import VQModelConfig
    from .vqmodel import VQModel

T = TypeVar("T")


@dataclass(frozen=True)
class TileConfig:
    """How to tile: sides in pixels (multiples of the downsample factor are used as given, others rounded down)."""

    tile_size: int = 512  # pixels per tile side; inputs no larger than this are not tiled
    tile_overlap: int = 64  # pixels shared by neighbouring tiles, blended linearly
    preview_side: int = 1024  # the statistics pass sees the input subsampled to at most this many pixels a side

    def __post_init__(self) -> None:
        if self.tile_size <= 0 or self.tile_overlap < 0 or self.tile_overlap >= self.tile_size:
            raise ValueError(f"need 0 <= tile_overlap < tile_size, got {self.tile_overlap} and {self.tile_size}")

    def latent(self, factor: int) -> tuple[int, int]:
        """(tile, overlap) in latent cells."""
        tile = max(1, self.tile_size // factor)
        return tile, min(self.tile_overlap // factor, tile - 1)

    def preview_stride(self, height: int, width: int) -> int:
        """Subsampling per side so that the preview is at most `preview_side` pixels a side."""
        return max(1, math.ceil(max(height, width) / self.preview_side))


# shared GroupNorm statistics
@dataclass(frozen=True)
class NormStats:
    """Per-sample mean and variance (B, G) float32 of every GroupNorm call, in call order."""

    means: tuple[torch.Tensor, ...]
    variances: tuple[torch.Tensor, ...]

    def sample(self, index: int) -> NormStats:
        return NormStats(
            tuple(m[index : index + 1] for m in self.means), tuple(v[index : index + 1] for v in self.variances)
        )

    @staticmethod
    def stack(items: Sequence[NormStats]) -> NormStats:
        """One-sample stats -> a batch, in order (tiles of several requests ride one batch)."""
        return NormStats(
            tuple(torch.cat(ms) for ms in zip(*(s.means for s in items), strict=True)),
            tuple(torch.cat(vs) for vs in zip(*(s.variances for s in items), strict=True)),
        )

    def to(self, device: torch.device) -> NormStats:
        return NormStats(tuple(m.to(device) for m in self.means), tuple(v.to(device) for v in self.variances))


_replaced = threading.local()  # .forward: what this thread's GroupNorms in .modules run instead, while inside
_install_lock = threading.Lock()


def _dispatch(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """A GroupNorm's forward: the replacement its thread asked for, else the class's own (bit for bit)."""
    forward = getattr(_replaced, "forward", None)
    if forward is not None and norm in _replaced.modules:
        return forward(norm, x)
    return nn.GroupNorm.forward(norm, x)


@contextmanager
def _norms_replaced(module: nn.Module, forward: Callable[[nn.GroupNorm, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Every GroupNorm in `module` runs `forward` instead of its own while inside, on this thread only.

    Thread-local, because the service lets another request's batch run on the same model while a tile is paused
    at a module boundary (service/preemption.py): that batch must see the model's own norms. The dispatching
    forward is installed once per norm and stays (it calls the class's forward when nothing is replaced)."""
    norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
    with _install_lock:
        for norm in norms:
            if "forward" not in vars(norm):
                norm.forward = types.MethodType(_dispatch, norm)  # type: ignore[method-assign]
    outer_forward = getattr(_replaced, "forward", None)
    outer_modules: frozenset[nn.Module] = getattr(_replaced, "modules", frozenset())
    _replaced.forward, _replaced.modules = forward, frozenset(norms)
    try:
        yield
    finally:
        _replaced.forward, _replaced.modules = outer_forward, outer_modules


def record_norm_stats(module: nn.Module, run: Callable[[], T]) -> tuple[T, NormStats]:
    """Run `run()` normally, recording each GroupNorm's per-group statistics of its input."""
    means: list[torch.Tensor] = []
    variances: list[torch.Tensor] = []

    def recording(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        grouped = x.float().reshape(x.shape[0], norm.num_groups, -1)  # (B, C, H, W) -> (B, G, C/G * H * W)
        var, mean = torch.var_mean(grouped, dim=2, correction=0)
        means.append(mean)
        variances.append(var)
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

    with _norms_replaced(module, recording):
        result = run()
    return result, NormStats(tuple(means), tuple(variances))


def apply_norm_stats(module: nn.Module, stats: NormStats, run: Callable[[], T]) -> T:
    """Run `run()` with every GroupNorm normalising by `stats` (call order as when recorded) instead of its input's."""
    calls = iter(range(len(stats.means)))

    def fixed(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        k = next(calls)
        batch, channels = x.shape[0], x.shape[1]
        per_group = channels // norm.num_groups
        inv_std = torch.rsqrt(stats.variances[k] + norm.eps)  # (B, G)
        scale = inv_std.repeat_interleave(per_group, dim=1)  # (B, G) -> (B, C)
        shift = -stats.means[k].repeat_interleave(per_group, dim=1) * scale
        if norm.weight is not None:
            scale = scale * norm.weight
            shift = shift * norm.weight + norm.bias
        # one fused multiply-add per element, in the activation's dtype and memory format
        view = (batch, channels, 1, 1)
        return torch.addcmul(shift.view(view).to(x.dtype), x, scale.view(view).to(x.dtype))

    with _norms_replaced(module, fixed):
        return run()


# geometry and blending
def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of the fewest tiles of side `tile` covering [0, length), neighbours sharing >= `overlap`."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))  # the fewest tiles that share `overlap` pairwise
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]  # evenly spread: equal overlaps
    return [(s, s + tile) for s in starts]


def ramp(size: int, ramp_in: int, ramp_out: int) -> torch.Tensor:
    """A 1-D blend window: linear from ~0 to 1 over `ramp_in` samples, flat, then down over `ramp_out`."""
    position = torch.arange(size, dtype=torch.float32) + 0.5
    window = torch.ones(size)
    if ramp_in:
        window = torch.minimum(window, position / ramp_in)
    if ramp_out:
        window = torch.minimum(window, (size - position) / ramp_out)
    return window


def blend_windows(length: int, tile: int, overlap: int, scale: int = 1) -> list[tuple[int, int, torch.Tensor]]:
    """Per tile along one axis: (start, end) in output samples (`scale` per latent cell) and its blend window.

    A window ramps only on sides that another tile shares; the outer edges of the image keep weight 1."""
    out = []
    tiles = spans(length, tile, overlap)
    for i, (start, end) in enumerate(tiles):
        ramp_in = (tiles[i - 1][1] - start) * scale if i > 0 else 0
        ramp_out = (end - tiles[i + 1][0]) * scale if i + 1 < len(tiles) else 0
        out.append((start * scale, end * scale, ramp((end - start) * scale, ramp_in, ramp_out)))
    return out


class Blender:
    """Accumulates weighted tiles into one (B, C, H, W) float32 map; `result()` divides by the summed weights."""

    def __init__(self, shape: tuple[int, int, int, int], device: torch.device | None = None) -> None:
        self.total = torch.zeros(shape, dtype=torch.float32, device=device)
        self.weight = torch.zeros((1, 1, shape[2], shape[3]), dtype=torch.float32, device=device)

    def add(self, tile: torch.Tensor, y: tuple[int, int, torch.Tensor], x: tuple[int, int, torch.Tensor]) -> None:
        (y0, y1, wy), (x0, x1, wx) = y, x
        window = (wy[:, None] * wx[None, :]).to(self.total.device)  # (th, tw)
        self.total[:, :, y0:y1, x0:x1].add_(tile.float() * window)
        self.weight[:, :, y0:y1, x0:x1].add_(window)

    def result(self) -> torch.Tensor:
        return self.total.div_(self.weight)


def tile_grid(
    height: int, width: int, tile: int, overlap: int, scale: int = 1
) -> list[tuple[tuple[int, int, torch.Tensor], tuple[int, int, torch.Tensor]]]:
    """Every tile of an (height, width) latent grid as (y window, x window) in output samples, raster order."""
    rows = blend_windows(height, tile, overlap, scale)
    cols = blend_windows(width, tile, overlap, scale)
    return [(y, x) for y in rows for x in cols]


# the model, tiled
def preview_image(images: torch.Tensor, config: TileConfig, factor: int) -> torch.Tensor:
    """Images (..., C, H, W) area-subsampled to at most `preview_side` a side, sides multiples of `factor`."""
    stride = config.preview_stride(images.shape[-2], images.shape[-1])
    if stride == 1:
        return images
    size = [max(factor, round(side / stride / factor) * factor) for side in images.shape[-2:]]
    batched = images if images.ndim == 4 else images[None]
    preview = F.interpolate(batched.float(), size=size, mode="area").to(images.dtype)
    return preview if images.ndim == 4 else preview[0]


def preview_cells(cells: torch.Tensor, config: TileConfig, factor: int) -> torch.Tensor:
    """A latent or index grid (..., h, w) subsampled (every s-th cell) so its image is at most `preview_side`."""
    stride = config.preview_stride(cells.shape[-2] * factor, cells.shape[-1] * factor)
    return cells[..., ::stride, ::stride]


def encode_preview(model: VQModel, images: torch.Tensor, config: TileConfig) -> NormStats:
    """The encoder's norm statistics, from the images area-subsampled to at most `preview_side` a side."""
    preview = preview_image(images, config, model.downsample_factor)
    _, stats = record_norm_stats(model.encoder, lambda: model.encoder(preview))
    return stats


def decode_preview(model: VQModel, quantized: torch.Tensor, config: TileConfig) -> NormStats:
    """The decoder's norm statistics, from a decode of the quantized grid subsampled (every s-th cell)."""
    preview = preview_cells(quantized, config, model.downsample_factor)
    _, stats = record_norm_stats(model.decoder, lambda: model.decode_quantized(preview))
    return stats


def encode_tile(model: VQModel, tile: torch.Tensor, stats: NormStats) -> torch.Tensor:
    """Image tiles (B, C, th, tw) -> latents (B, D, th/f, tw/f) before quantization, normalised by `stats`."""
    return model.quant_conv(apply_norm_stats(model.encoder, stats, lambda: model.encoder(tile)))


def decode_tile(model: VQModel, quantized: torch.Tensor, stats: NormStats) -> torch.Tensor:
    """Quantized latent tiles (B, D, th, tw) -> images (B, C, th*f, tw*f), normalised by `stats`."""
    return apply_norm_stats(model.decoder, stats, lambda: model.decode_quantized(quantized))


def encode_tiled(model: VQModel, images: torch.Tensor, config: TileConfig) -> torch.Tensor:
    """Images (B, C, H, W), sides multiples of f -> latents (B, D, H/f, W/f), blended before quantization."""
    factor = model.downsample_factor
    stats = encode_preview(model, images, config)
    height, width = images.shape[-2] // factor, images.shape[-1] // factor
    tile, overlap = config.latent(factor)
    blender = Blender((images.shape[0], model.config.embed_dim, height, width), images.device)
    for y, x in tile_grid(height, width, tile, overlap):
        pixels = images[:, :, y[0] * factor : y[1] * factor, x[0] * factor : x[1] * factor]
        blender.add(encode_tile(model, pixels, stats), y, x)
    return blender.result()


def decode_tiled(model: VQModel, quantized: torch.Tensor, config: TileConfig) -> torch.Tensor:
    """Quantized latents (B, D, h, w) -> images (B, C, h*f, w*f), tiles blended in pixel space."""
    factor = model.downsample_factor
    stats = decode_preview(model, quantized, config)
    height, width = quantized.shape[-2], quantized.shape[-1]
    tile, overlap = config.latent(factor)
    blender = Blender(
        (quantized.shape[0], model.config.out_channels, height * factor, width * factor), quantized.device
    )
    for y, x in tile_grid(height, width, tile, overlap, scale=factor):
        cells = quantized[:, :, y[0] // factor : y[1] // factor, x[0] // factor : x[1] // factor]
        blender.add(decode_tile(model, cells, stats), y, x)
    return blender.result()


# memory
LIVE_ACTIVATIONS = 5  # tensors of a level's widest shape alive at once at its peak (input, norm, conv, residual, ...)


def activation_bytes_per_pixel(config: VQModelConfig, element_size: int) -> int:
    """Peak activation memory of a forward pass per image pixel, from the config: at every resolution level the
    widest tensor (an upsampled decoder tensor keeps the coarser level's channels at the finer resolution) times
    `LIVE_ACTIVATIONS`. Conservative; the service checks it against a measured peak (tests/service)."""
    channels = config.block_out_channels
    widest = 0.0
    for level, width in enumerate(channels):  # encoder and decoder: level i holds 1/4**i of the pixels
        widest = max(widest, width / 4**level)
    for level in range(1, len(channels)):  # decoder upsampling: channels[level] at the resolution of level - 1
        widest = max(widest, channels[level] / 4 ** (level - 1))
    return math.ceil(LIVE_ACTIVATIONS * widest * element_size)
