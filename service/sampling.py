"""Drawing code grids from a model's learned prior (/generate, /complete, the CLI's `generate`), one raster step
at a time through the batcher.

A sample is drawn one code at a time in raster order, each code from the prior's distribution given every code
before it. Each step of a request is one `ticket.run(Op.PRIOR_STEP, ...)` with one item per sample, so:
- the steps of concurrent requests on grids of one shape ride one batch (the runs say `continues=True`, so the
  batcher waits for a request between its steps as for one still decoding its body);
- a request whose deadline passes or whose client leaves stops within one step (the batcher drops it);
- encode and decode requests that arrive meanwhile are served in turn (each step queues behind them).
Sample b draws with its own generator, seeded from (seed, first_sample + b), so the same seed gives the same
samples however requests are batched or split. The loop is written once (`raster_steps`, a generator of steps);
`draw` runs it through a ticket, `draw_in_process` straight on an engine (the CLI without a server). Parsing and
checking (`generation_job`, `completion_job`) is CPU work for the codec pool. Nothing here knows HTTP.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.prior import PriorConfig, generator_for

from . import tiles
from .batching import Ticket
from .engine import Engine
from .errors import ServiceError
from .facts import ModelFacts
from .inputs import check_count, check_latent_area, parse_json
from .ops import Op, PriorStep
from .runtime import Services
from .schemas import MAX_SEED, CompleteRequest, GenerateRequest


@dataclass(frozen=True)
class Draw:
    """How a request draws, checked against the model's prior."""

    count: int
    label: int | None  # None: unconditional
    temperature: float
    top_k: int | None
    seed: int
    first_sample: int


@dataclass(frozen=True)
class SamplingJob:
    """What one request draws: its start grids (copies, filled in as it goes) and the cells to draw, in order."""

    draw: Draw
    grids: list[torch.Tensor]  # count x (h, w) int64
    cells: list[tuple[int, int]]  # raster order

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.grids[0].shape
        return int(h), int(w)


@dataclass(frozen=True)
class Sampled:
    """The drawn grids and their images, in sample order."""

    draw: Draw
    grids: list[torch.Tensor]  # (h, w) int64
    images: list[np.ndarray]  # (H, W, C) uint8


def raster_steps(job: SamplingJob) -> Generator[list[PriorStep], list[int], list[torch.Tensor]]:
    """The request's steps: yields one PriorStep per sample for each cell, is sent the codes drawn, writes them
    into the grids; returns the grids."""
    draw = job.draw
    generators = [
        generator_for(draw.seed, draw.first_sample + b)  # as model.prior.sample draws
        for b in range(draw.count)
    ]
    for cell in job.cells:
        steps = [
            PriorStep(grid, cell, draw.label, draw.temperature, draw.top_k, generator)
            for grid, generator in zip(job.grids, generators, strict=True)
        ]
        codes = yield steps
        for grid, code in zip(job.grids, codes, strict=True):
            grid[cell] = code
    return job.grids


async def draw(ticket: Ticket, services: Services, facts: ModelFacts, job: SamplingJob) -> Sampled:
    """Run the job's steps on the ticket (batched with other requests' steps), then decode the grids."""
    steps = raster_steps(job)
    try:
        batch = next(steps)
        while True:
            codes = (await ticket.run(Op.PRIOR_STEP, batch, continues=True)).values  # the decode run follows
            batch = steps.send(codes)
    except StopIteration as done:
        grids: list[torch.Tensor] = done.value
    images = (await tiles.run(ticket, services, facts, Op.DECODE_INDICES, grids)).values
    return Sampled(job.draw, grids, images)


def draw_in_process(engine: Engine, job: SamplingJob) -> Sampled:
    """`draw` without a server: the same steps straight on `engine` (blocking; inputs no larger than a tile)."""
    steps = raster_steps(job)
    try:
        batch = next(steps)
        while True:
            batch = steps.send(engine.run(Op.PRIOR_STEP, batch))
    except StopIteration as done:
        grids: list[torch.Tensor] = done.value
    return Sampled(job.draw, grids, engine.run(Op.DECODE_INDICES, grids))


# parsing and checking the requests (codec pool)
def check_prior(facts: ModelFacts) -> PriorConfig:
    """The model's prior, or 422 `no_prior`."""
    if facts.prior is None:
        raise ServiceError(
            "no_prior",
            f"model {facts.name!r} has no prior over its codes (its checkpoint has no prior/ folder); "
            "/generate, /complete and return_nll need one (`python -m model.train_prior`)",
        )
    return facts.prior


def check_label(facts: ModelFacts, label: int | None) -> int | None:
    """A class of the model's prior, or None for unconditional (-1 and None mean that); 422 `invalid_label`."""
    prior = check_prior(facts)
    if label is None or label == -1:
        return None
    if prior.num_labels == 0:
        raise ServiceError(
            "invalid_label", f"the prior of model {facts.name!r} is unconditional; omit label (got {label})"
        )
    if not 0 <= label < prior.num_labels:
        raise ServiceError(
            "invalid_label",
            f"label must lie in [0, {prior.num_labels}) for the prior of model {facts.name!r} (or be -1 or null for "
            f"unconditional samples); got {label}",
        )
    return label


def _draw(request: GenerateRequest, facts: ModelFacts, max_images: int) -> Draw:
    prior = check_prior(facts)
    check_count(request.count, max_images)
    if request.top_k is not None and request.top_k > prior.num_vq_embeddings:
        raise ServiceError(
            "invalid_input",
            f"top_k must lie in [1, {prior.num_vq_embeddings}] (the codebook size of model {facts.name!r}); "
            f"got {request.top_k}",
        )
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    label = check_label(facts, request.label)
    return Draw(request.count, label, request.temperature, request.top_k, seed, request.first_sample)


def _raster(h: int, w: int, mask: np.ndarray | None = None) -> list[tuple[int, int]]:
    return [(i, j) for i in range(h) for j in range(w) if mask is None or mask[i, j]]


def generation_job(body: bytes, facts: ModelFacts, max_images: int) -> SamplingJob:
    """A /generate body (empty: every default) -> its job: `count` grids of the prior's trained shape."""
    request = parse_json(body or b"{}", GenerateRequest)
    draw = _draw(request, facts, max_images)
    h, w = check_prior(facts).grid_size
    return SamplingJob(draw, [torch.zeros(h, w, dtype=torch.int64) for _ in range(draw.count)], _raster(h, w))


def completion_job(body: bytes, facts: ModelFacts, max_images: int, max_pixels: int) -> SamplingJob:
    """A /complete body -> its job: `count` copies of the grid, its mask-1 cells to draw in raster order."""
    request = parse_json(body, CompleteRequest)
    draw = _draw(request, facts, max_images)
    indices, mask = _grid(request.indices, "indices"), _grid(request.mask, "mask")
    if indices.shape != mask.shape:
        raise ServiceError(
            "invalid_input", f"mask must have the shape of indices, {list(indices.shape)}; got {list(mask.shape)}"
        )
    size = facts.config.codebook_size
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= size:
        raise ServiceError(
            "invalid_input",
            f"indices must lie in [0, {size}) for model {facts.name!r}; got values in [{low}, {high}]",
        )
    h, w = indices.shape
    check_latent_area(h, w, facts, "the index map")
    pixels = h * w * facts.config.downsample_factor**2
    if pixels > max_pixels:
        raise ServiceError("image_too_large", f"the output would be {pixels} pixels; the limit is {max_pixels}")
    grid = torch.from_numpy(indices)
    return SamplingJob(draw, [grid.clone() for _ in range(draw.count)], _raster(h, w, mask))


def _grid(rows: list[list[int]], name: str) -> np.ndarray:
    """Rows of integers -> (h, w) int64; 422 unless every row has the same, non-zero, length."""
    widths = {len(row) for row in rows}
    if len(widths) != 1 or 0 in widths:
        raise ServiceError(
            "invalid_input", f"{name} must be h rows of the same non-zero length; got row lengths {sorted(widths)}"
        )
    try:
        return np.asarray(rows, dtype=np.int64)
    except OverflowError as exc:
        raise ServiceError("invalid_input", f"{name} holds a value out of range: {exc}") from exc


def check_fits(services: Services, facts: ModelFacts, shape: tuple[int, int]) -> None:
    """413 for a grid whose prior forward alone needs more than the memory budget of a batch."""
    needed = services.engines[facts.name].cost(Op.PRIOR_STEP, shape).bytes
    budget = services.batcher.policy.max_batch_bytes
    if needed > budget:
        raise ServiceError(
            "image_too_large",
            f"a {shape[0]}x{shape[1]} code grid needs about {needed >> 20} MiB in the prior, over the batch memory "
            f"budget of {budget >> 20} MiB (VQSERVE_MEMORY_BUDGET_MB); send a smaller grid",
        )


def nll_inputs(results: list[Any]) -> list[torch.Tensor]:
    """Encoded results -> the index grids whose likelihood PRIOR_NLL computes."""
    return [result.indices.long() for result in results]
