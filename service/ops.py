"""What the engine can be asked to do: the ops, one typed parameter object each, and what they return.

Shared vocabulary of the batcher (which queues items per op, shape and parameters) and the engine (which runs
them); neither knows the other's internals. Items of one batch share their op and their parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from model.tiling import NormStats


class Op(StrEnum):
    """One engine operation; the value is the `op` label of the batch metrics."""

    ENCODE = "encode"  # image (C, H, W) in [-1, 1] -> Encoded
    RECONSTRUCT = "reconstruct"  # image (C, H, W) -> uint8 (H, W, C) through the codebook
    DECODE_INDICES = "decode_indices"  # indices (h, w) int64 -> uint8 (H, W, C)
    DECODE_LATENTS = "decode_latents"  # latents (D, h, w) float32 -> uint8 (H, W, C)
    DECODE_FLOAT = "decode_float"  # latents (D, h, w) float32 -> the decoder's floats (C, H, W)
    # inputs larger than one tile (service/tiles.py): statistics from a preview, then tiles as ordinary items
    ENCODE_STATS = "encode_stats"  # preview image (C, h, w) -> NormStats of the encoder
    ENCODE_TILE = "encode_tile"  # Tile of an image (C, th, tw) -> latents (D, th/f, tw/f) float32, unquantized
    QUANTIZE = "quantize"  # blended latents (D, h, w) float32 -> Encoded
    DECODE_STATS = "decode_stats"  # preview indices (h, w) or quantized latents (D, h, w) -> NormStats of the decoder
    DECODE_TILE = "decode_tile"  # Tile of indices (th, tw) or quantized latents (D, th, tw) -> floats (C, TH, TW)
    # the learned prior over the codes (models whose checkpoint has `prior/`; service/sampling.py)
    PRIOR_STEP = "prior_step"  # PriorStep: one sample's grid so far -> the code drawn at its next cell (int)
    PRIOR_NLL = "prior_nll"  # indices (h, w) int64 -> mean negative log-likelihood in bits per code (float)


@dataclass(frozen=True)
class NoParams:
    """The ops that take nothing but their input."""


@dataclass(frozen=True)
class LatentDecode:
    """How latents become images (DECODE_LATENTS)."""

    force_not_quantize: bool = False  # decode the latents as given instead of snapping them to the codebook
    scaling_factor: float | None = None  # latents are divided by it first, as diffusion pipelines do


@dataclass(frozen=True)
class FloatDecode:
    """DECODE_FLOAT: the decoder's output as floats, for clients that post-process it themselves."""

    force_not_quantize: bool = False
    unit_range: bool = False  # False: raw decoder output (~[-1, 1]); True: mapped to [0, 1] and clamped


@dataclass(frozen=True)
class PriorNLL:
    """PRIOR_NLL: the label the likelihood is conditioned on (None: unconditional)."""

    label: int | None = None


OpParams = NoParams | LatentDecode | FloatDecode | PriorNLL
PARAMS: dict[Op, type[OpParams]] = {
    Op.ENCODE: NoParams,
    Op.RECONSTRUCT: NoParams,
    Op.DECODE_INDICES: NoParams,
    Op.DECODE_LATENTS: LatentDecode,
    Op.DECODE_FLOAT: FloatDecode,
    Op.ENCODE_STATS: NoParams,
    Op.ENCODE_TILE: NoParams,
    Op.QUANTIZE: NoParams,
    Op.DECODE_STATS: NoParams,
    Op.DECODE_TILE: NoParams,
    Op.PRIOR_STEP: NoParams,  # what differs between samples (cell, label, temperature, generator) rides in PriorStep
    Op.PRIOR_NLL: PriorNLL,
}
# the tiled ops of a large input (service/tiles.py): such a batch pauses at a module boundary to let one batch of the
# other ops in (service/preemption.py), so a small request never waits for a whole tile
PREEMPTIBLE_OPS = frozenset({Op.ENCODE_STATS, Op.ENCODE_TILE, Op.QUANTIZE, Op.DECODE_STATS, Op.DECODE_TILE})
# ops whose input is an image at full resolution (the others take a latent grid, 1/f of the output's sides)
IMAGE_INPUT_OPS = frozenset({Op.ENCODE, Op.RECONSTRUCT, Op.ENCODE_STATS, Op.ENCODE_TILE})


def check_params(op: Op, params: OpParams | None) -> OpParams:
    """The op's parameters (its defaults when None); a TypeError for another op's parameter object."""
    expected = PARAMS[op]
    if params is None:
        return expected()
    if not isinstance(params, expected):
        raise TypeError(f"op {op} takes {expected.__name__}, got {type(params).__name__}")
    return params


def output_pixels(op: Op, shape: tuple[int, ...], downsample_factor: int) -> int:
    """Image pixels an item of `shape` stands for: its input's for encode, its output's for decode."""
    h, w = shape[-2], shape[-1]
    return h * w if op in IMAGE_INPUT_OPS else h * w * downsample_factor**2


@dataclass(frozen=True, eq=False)
class Tile:
    """One tile of an input larger than a tile, with the norm statistics of the whole input (model/tiling.py)."""

    tensor: torch.Tensor
    stats: NormStats

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype


@dataclass(frozen=True, eq=False)
class PriorStep:
    """One sample's next raster step: its grid so far and how to draw the code at `cell`.

    Everything that may differ between the samples of one batch rides here, not in the op's parameters, so that
    the steps of every request on a grid of one shape batch together whatever their label, temperature or
    position; each sample keeps its own generator across its steps, so batching never changes what it draws."""

    indices: torch.Tensor  # (H, W) int64: the codes so far (cells after `cell` are ignored by the prior)
    cell: tuple[int, int]  # (row, column) to draw
    label: int | None  # class of a conditional prior; None: unconditional
    temperature: float  # > 0
    top_k: int | None  # draw among the k most likely codes; None: all
    generator: torch.Generator  # this sample's, advanced by each draw

    @property
    def shape(self) -> torch.Size:
        return self.indices.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.indices.dtype


Payload = torch.Tensor | Tile | PriorStep


@dataclass(frozen=True)
class Encoded:
    """ENCODE's result for one image."""

    indices: torch.Tensor  # (h, w) int32
    latents: torch.Tensor  # (D, h, w) float32, after quant_conv, before quantization
