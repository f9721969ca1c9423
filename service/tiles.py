"""Inputs larger than one tile: split into tiles that ride the batcher as ordinary items, then blended back.

`run` is what a route calls instead of `ticket.run`: it gives the same results, in the same order. An input no
larger than `VQSERVE_TILE_SIZE` runs the plain op, bit for bit as before. A larger one runs, on the same ticket:
the statistics op on a preview (model/tiling.py explains why tiles must share GroupNorm statistics), then its
tiles in runs of as many as fit one batch's memory budget (each run queues behind what arrived meanwhile, so small
requests interleave with it, and a request whose deadline passed or whose client left stops within one batch),
then, for encoding, the quantization of the blended latents, in bands of rows that are runs of their own.
Splitting and blending run in the codec pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from model.pixels import to_uint8, to_unit_range
from model.tiling import Blender, TileConfig, preview_cells, preview_image, tile_grid

from . import metrics
from .batching import Ticket
from .facts import ModelFacts
from .ops import Encoded, FloatDecode, LatentDecode, Op, OpParams, Tile, check_params
from .runtime import Services

# distance-matrix elements (cells x codes) one quantization run computes: 8 rows of a 1024-wide grid against 8192
# codes, a few hundredths of a second on 2 CPU cores, so a small request waits at most that long for the codes of a
# large image, and a deadline is noticed within it
QUANTIZE_BAND_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class Tiled:
    """`Outcome.values` of the op, and how many tiles were computed for it (the `x-tiles` header)."""

    values: list[Any]
    tiles: int = 0


@dataclass
class _Plan:
    """How one request's large inputs are tiled."""

    ticket: Ticket
    services: Services
    facts: ModelFacts
    config: TileConfig

    @property
    def factor(self) -> int:
        return self.facts.config.downsample_factor

    def per_run(self, op: Op, tile_shape: tuple[int, ...]) -> int:
        """Tiles per run: as many as fit one batch (memory budget and batch size), at least one; one on a CPU,
        where a batch of tiles takes as long as the same tiles one by one (the convolutions already run at the
        CPU's matmul rate), so running them singly costs nothing and lets other requests in after every tile
        (bench/README.md, "Tiling": a 256² request waited for a whole batch of 4 tiles otherwise)."""
        if self.facts.device == "cpu":
            return 1
        policy = self.services.batcher.policy
        cost = self.services.engines[self.facts.name].cost(op, tile_shape)
        return max(1, min(policy.max_batch_size, policy.max_batch_bytes // max(cost.bytes, 1)))

    async def _run(self, op: Op, inputs: Sequence[Any]) -> list[Any]:
        return (await self.ticket.run(op, inputs)).values

    async def _tiles(self, op: Op, source: torch.Tensor, blender: Blender) -> None:
        """Run `op` on every tile of `source` and blend the results: an image (C, H, W) for ENCODE_TILE (latents
        out, one sample per cell), else a grid of cells (..., h, w) (pixels out, f samples per cell)."""
        f = self.factor
        step, scale = (f, 1) if op == Op.ENCODE_TILE else (1, f)  # source samples, output samples per cell
        stats_op = Op.ENCODE_STATS if op == Op.ENCODE_TILE else Op.DECODE_STATS
        (stats,) = await self._run(stats_op, [self._preview(op, source)])
        grid = tile_grid(source.shape[-2] // step, source.shape[-1] // step, *self.config.latent(f), scale=scale)

        def cut(y: tuple[int, int, Any], x: tuple[int, int, Any]) -> torch.Tensor:
            rows = slice(y[0] // scale * step, y[1] // scale * step)
            cols = slice(x[0] // scale * step, x[1] // scale * step)
            return source[..., rows, cols]

        per_run = self.per_run(op, tuple(cut(*grid[0]).shape))
        for start in range(0, len(grid), per_run):
            windows = grid[start : start + per_run]
            outputs = await self._run(op, [Tile(cut(y, x), stats) for y, x in windows])
            await self.services.offload("tile_blend", _blend, blender, windows, outputs)
        self.ticket.tiles += len(grid)
        metrics.TILES.labels(self.facts.name, op).inc(len(grid))

    def _preview(self, op: Op, source: torch.Tensor) -> torch.Tensor:
        if op == Op.ENCODE_TILE:
            return preview_image(source, self.config, self.factor)
        return preview_cells(source, self.config, self.factor).contiguous()

    # the large-input form of each op
    async def encode(self, image: torch.Tensor) -> Encoded:
        """(C, H, W) -> Encoded of the whole image: latents blended across tiles, then quantized once."""
        f = self.factor
        blender = Blender((1, self.facts.config.embed_dim, image.shape[-2] // f, image.shape[-1] // f))
        await self._tiles(Op.ENCODE_TILE, image, blender)
        latents = await self.services.offload("tile_blend", blender.result)
        return await self.quantize(latents[0])

    async def quantize(self, latents: torch.Tensor) -> Encoded:
        """Latents (D, h, w) -> Encoded, in bands of rows, each its own run: nearest-code search is per cell, so
        the bands give exactly the whole grid's result, and no run holds the engine long (the codes of a 4096²
        image took 20-40 s as one batch, with nothing let in and no deadline noticed)."""
        rows = max(1, QUANTIZE_BAND_ELEMENTS // max(1, latents.shape[-1] * self.facts.config.codebook_size))
        parts = [(await self._run(Op.QUANTIZE, [band]))[0] for band in latents.split(rows, dim=-2)]
        if len(parts) == 1:
            return parts[0]
        return await self.services.offload("tile_blend", _joined, parts)

    async def decode(self, cells: torch.Tensor) -> torch.Tensor:
        """Indices (h, w) or quantized latents (D, h, w) -> the decoder's floats (C, h*f, w*f), blended."""
        f = self.factor
        blender = Blender((1, self.facts.config.out_channels, cells.shape[-2] * f, cells.shape[-1] * f))
        await self._tiles(Op.DECODE_TILE, cells, blender)
        return (await self.services.offload("tile_blend", blender.result))[0]

    async def decode_latents(self, latents: torch.Tensor, force_not_quantize: bool) -> torch.Tensor:
        """Latents (D, h, w) -> floats: quantized first (once, whole) unless `force_not_quantize`."""
        if force_not_quantize:
            return await self.decode(latents)
        encoded = await self.quantize(latents)
        return await self.decode(encoded.indices.long())

    async def one(self, op: Op, item: torch.Tensor, params: OpParams) -> Any:
        """The result `op` would give for `item`, computed in tiles."""
        if op == Op.ENCODE:
            return await self.encode(item)
        if op == Op.RECONSTRUCT:
            return await self.services.offload(
                "tile_blend", _uint8, await self.decode((await self.encode(item)).indices.long())
            )
        if op == Op.DECODE_INDICES:
            return await self.services.offload("tile_blend", _uint8, await self.decode(item))
        if op == Op.DECODE_LATENTS:
            assert isinstance(params, LatentDecode)
            latents = item.float() if params.scaling_factor is None else item.float() / params.scaling_factor
            return await self.services.offload(
                "tile_blend", _uint8, await self.decode_latents(latents, params.force_not_quantize)
            )
        if op == Op.DECODE_FLOAT:
            assert isinstance(params, FloatDecode)
            images = await self.decode_latents(item.float(), params.force_not_quantize)
            images = to_unit_range(images) if params.unit_range else images
            return images.to(getattr(torch, self.facts.dtype))
        raise ValueError(f"op {op} has no tiled form")


def tile_config(services: Services) -> TileConfig | None:
    """The tiling settings, or None when VQSERVE_TILE_SIZE is 0."""
    settings = services.settings
    if settings.tile_size == 0:
        return None
    return TileConfig(settings.tile_size, settings.tile_overlap, preview_side=2 * settings.tile_size)


async def run(
    ticket: Ticket,
    services: Services,
    facts: ModelFacts,
    op: Op,
    inputs: Sequence[torch.Tensor],
    params: OpParams | None = None,
) -> Tiled:
    """`ticket.run(op, inputs, params)`, with inputs larger than a tile computed in tiles."""
    checked = check_params(op, params)
    config = tile_config(services)
    factor = facts.config.downsample_factor
    scale = 1 if op in (Op.ENCODE, Op.RECONSTRUCT) else factor  # output pixels per input sample
    large = [
        i
        for i, x in enumerate(inputs)
        if config is not None and max(x.shape[-2], x.shape[-1]) * scale > config.tile_size
    ]
    if not large:
        return Tiled((await ticket.run(op, inputs, checked)).values)
    values: list[Any] = [None] * len(inputs)
    small = [i for i in range(len(inputs)) if i not in large]
    if small:
        for i, value in zip(small, (await ticket.run(op, [inputs[i] for i in small], checked)).values, strict=True):
            values[i] = value
    assert config is not None
    plan = _Plan(ticket, services, facts, config)
    for i in large:
        values[i] = await plan.one(op, inputs[i], checked)
    return Tiled(values, ticket.tiles)


# codec-pool work
def _joined(parts: list[Encoded]) -> Encoded:
    """Bands of rows back into one grid."""
    return Encoded(torch.cat([p.indices for p in parts], dim=-2), torch.cat([p.latents for p in parts], dim=-2))


def _blend(blender: Blender, windows: list[Any], outputs: list[torch.Tensor]) -> None:
    for (y, x), output in zip(windows, outputs, strict=True):
        blender.add(output[None], y, x)


def _uint8(images: torch.Tensor) -> Any:
    """(C, H, W) floats -> (H, W, C) uint8, as the engine's image ops return."""
    return to_uint8(images).permute(1, 2, 0).numpy()
