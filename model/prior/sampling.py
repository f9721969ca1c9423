"""Sampling code grids from a prior, cell by cell in raster order.

`sample_cell` is the one step: it draws one code from one cell's logits with the request's own generator. The
service batches the network passes of many requests (each at its own raster position) and calls it per request;
`sample` is the in-process loop built from the same step. Each sample b of a call draws from its own generator
seeded from (seed, b), so a seed gives the same samples however the network passes were batched.
"""

from __future__ import annotations

import torch

from .likelihood import check_codes
from .network import PixelCNNPrior

SEED_STRIDE = 1_000_003  # sample b of seed s uses generator seed s * SEED_STRIDE + b


def generator_for(seed: int, index: int) -> torch.Generator:
    """The CPU generator of sample `index` of a request with `seed`."""
    return torch.Generator().manual_seed(seed * SEED_STRIDE + index)


def sample_cell(logits_row: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    """Logits (K,) of one cell -> one code drawn from softmax(logits / temperature), limited to the top_k largest.

    Computed in float32 on the CPU (where the generator lives), so the draw does not depend on the device."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits_row.detach().to("cpu", torch.float32) / temperature  # (K,)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if top_k < logits.numel():
            values, codes = torch.topk(logits, top_k)  # (top_k,) each
            choice = torch.multinomial(torch.softmax(values, dim=0), 1, generator=generator)
            return int(codes[choice])
    return int(torch.multinomial(torch.softmax(logits, dim=0), 1, generator=generator))


def _per_sample(tensor: torch.Tensor, count: int, name: str) -> torch.Tensor:
    """(H, W) or (count, H, W) -> (count, H, W)."""
    if tensor.ndim == 2:
        return tensor.expand(count, *tensor.shape)
    if tensor.ndim == 3 and tensor.shape[0] == count:
        return tensor
    raise ValueError(f"{name} must be shaped (H, W) or ({count}, H, W), got {tuple(tensor.shape)}")


@torch.no_grad()
def sample(
    prior: PixelCNNPrior,
    count: int,
    label: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    grid_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Draw `count` code grids -> LongTensor (count, H, W) on the CPU.

    Without `indices`, every cell of a `grid_size` grid (default: the trained one) is sampled. With `indices`
    ((H, W) or (count, H, W)) and a `mask` of the same shape, the cells where mask is 1 are resampled in raster
    order, each given every cell before it; the others keep their code exactly. `label`: a class of a
    conditional prior, None (or -1) for unconditional samples."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if indices is None:
        if mask is not None:
            raise ValueError("a mask needs the indices it applies to")
        height, width = grid_size or prior.config.grid_size
        grid = torch.zeros(count, height, width, dtype=torch.long)
        todo = torch.ones(count, height, width, dtype=torch.bool)
    else:
        if indices.is_floating_point():
            raise ValueError("indices must be an integer tensor")
        grid = _per_sample(indices.cpu().long(), count, "indices").clone()
        check_codes(prior, grid)
        height, width = grid.shape[1:]
        todo = torch.ones_like(grid, dtype=torch.bool) if mask is None else _per_sample(mask.cpu() != 0, count, "mask")
        if todo.shape != grid.shape:
            raise ValueError(f"mask shape {tuple(todo.shape)} differs from indices shape {tuple(grid.shape)}")
    labels = torch.full((count,), -1 if label is None else label, dtype=torch.long)
    prior.label_indices(labels, count)  # refuse a bad label before any work
    generators = [generator_for(seed, b) for b in range(count)]
    was_training = prior.training
    prior.eval()
    try:
        for position in range(height * width):
            i, j = divmod(position, width)
            rows = todo[:, i, j].nonzero().flatten().tolist()
            if not rows:
                continue
            # the network is causal: rows below i cannot change the logits of row i, so they are left out
            visible = grid[rows, : i + 1].to(prior.device)  # (n, i + 1, W)
            logits = prior(visible, labels[rows])[:, :, i, j].cpu()  # (n, K)
            for n, b in enumerate(rows):
                grid[b, i, j] = sample_cell(logits[n], temperature, top_k, generators[b])
    finally:
        prior.train(was_training)
    return grid
