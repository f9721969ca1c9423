"""The VQ-VAE training objective and codebook upkeep, kept apart from the inference model.

`VQModel.quantize` is the serving quantizer (no gradients). Training needs the straight-through estimator, the
codebook and commitment losses of van den Oord et al. (beta = 0.25), and dead-code restarts: codes no encoder
output picked over a window are re-seeded from recent encoder outputs, so the whole codebook stays in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import VQModel

BETA = 0.25


@dataclass
class StepOutput:
    loss: torch.Tensor
    recon_loss: torch.Tensor  # detached: reading it is the caller's choice (a GPU sync)
    indices: torch.Tensor | None  # (B*h*w,) codes picked, None before quantization starts
    latents: torch.Tensor  # (B*h*w, D) encoder outputs, detached


def forward_loss(model: VQModel, x: torch.Tensor, quantize: bool) -> StepOutput:
    """Images (B, C, H, W) in [-1, 1] -> L1 + L2 reconstruction + codebook + beta * commitment."""
    z = model.encode(x)  # (B, D, h, w)
    b, d, h, w = z.shape
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B, D, h, w) -> (B*h*w, D)
    latents = z_flat.detach()

    # quantize with a straight-through gradient, or pass the latents through during the warm-up
    indices = None
    vq_loss = torch.zeros((), device=x.device)
    if quantize:
        indices = model.quantize.nearest(z_flat.detach())
        codes = model.quantize.embedding(indices)  # (B*h*w, D), differentiable w.r.t. the codebook
        vq_loss = F.mse_loss(codes, z_flat.detach()) + BETA * F.mse_loss(z_flat, codes.detach())
        z_flat = z_flat + (codes - z_flat).detach()
    quantized = z_flat.view(b, h, w, d).permute(0, 3, 1, 2)  # (B*h*w, D) -> (B, D, h, w)

    # reconstruct
    recon = model.decode_quantized(quantized)
    recon_loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
    return StepOutput(
        loss=recon_loss + vq_loss,
        recon_loss=recon_loss.detach(),
        indices=indices,
        latents=latents,
    )


class CodebookKeeper:
    """Counts code usage and re-seeds dead codes from a ring buffer of recent encoder outputs."""

    def __init__(self, num_codes: int, dim: int, generator: torch.Generator, buffer_size: int = 65536) -> None:
        self.counts = torch.zeros(num_codes, dtype=torch.long)
        self.buffer = torch.zeros(0, dim)
        self.buffer_size = buffer_size
        self.generator = generator
        self.restarted_total = 0

    def observe(self, latents: torch.Tensor, indices: torch.Tensor | None) -> None:
        self.buffer = torch.cat([latents.float().cpu(), self.buffer])[: self.buffer_size]
        if indices is not None:
            self.counts += torch.bincount(indices.cpu(), minlength=self.counts.numel())

    def _sample(self, n: int) -> torch.Tensor:
        picks = torch.randint(0, len(self.buffer), (n,), generator=self.generator)
        return self.buffer[picks]

    @torch.no_grad()
    def seed_codebook(self, model: VQModel) -> None:
        """Initialise every code from recent encoder outputs (used when quantization switches on)."""
        weight = model.quantize.embedding.weight
        weight.copy_(self._sample(weight.shape[0]).to(weight))
        self.counts.zero_()

    @torch.no_grad()
    def restart_dead(self, model: VQModel, optimizer: torch.optim.Optimizer) -> int:
        """Re-seed codes unused since the last call; their Adam moments are reset. Returns how many."""
        dead = (self.counts == 0).nonzero().flatten()
        self.counts.zero_()
        if dead.numel() == 0 or len(self.buffer) == 0:
            return 0
        weight = model.quantize.embedding.weight
        samples = self._sample(dead.numel())
        noise = 0.01 * samples.std() * torch.randn(samples.shape, generator=self.generator)
        weight[dead.to(weight.device)] = (samples + noise).to(weight)
        for moment in optimizer.state.get(weight, {}).values():
            if isinstance(moment, torch.Tensor) and moment.shape == weight.shape:
                moment[dead.to(moment.device)] = 0
        self.restarted_total += int(dead.numel())
        return int(dead.numel())
