"""Nearest-code vector quantization with bounded memory and float32 distances.

diffusers' `VectorQuantizer` calls `torch.cdist` on all latent vectors against the whole codebook at once: an
(N, K) float matrix that grows with the image and the codebook (16384 codes x a 128x128 grid = 1 GiB). Here the
distances use the expanded form ||z||^2 - 2 z.e + ||e||^2 over chunks of rows, always in float32 whatever the
model's dtype, so half-precision serving picks the same codes. The argmin equals cdist's except on exact ties.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Distance-matrix elements computed at once. CPU: 2**20 float32 = 4 MiB, which stays in cache between the matmul
# that writes it and the min that reads it, in one buffer reused for every chunk (a fresh 64 MiB matrix per chunk
# spent more time in page faults than in the matmul): 4096 latent vectors x 8192 codes took 25 instead of 76 ms on
# 2 cores (bench/quantizer.py, bench/README.md section 8.5). GPU: 2**24, fewer and larger kernels.
_CHUNK_ELEMENTS = {"cpu": 1 << 20}
_CHUNK_ELEMENTS_OTHER = 1 << 24


class VectorQuantizer(nn.Module):
    """A codebook of `num_embeddings` vectors of width `embed_dim`; key `embedding.weight` as in diffusers."""

    def __init__(self, num_embeddings: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)
        self._frozen = False  # set by freeze(): the augmented codebook may then be kept between calls
        self._cached: tuple[tuple[object, ...], torch.Tensor] | None = None

    @property
    def num_embeddings(self) -> int:
        return self.embedding.num_embeddings

    @property
    def embed_dim(self) -> int:
        return self.embedding.embedding_dim

    @torch.no_grad()
    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors -> (N,) int64 indices of the nearest codebook entries, in float32.

        One matmul per chunk gives ||z||^2 - 2 z.e + ||e||^2 directly, from [-2z, ||z||^2, 1] . [e, 1, ||e||^2]
        (the arithmetic of torch.cdist's matmul path): no bias copy and no extra pass over the distance matrix.
        `torch.min` along the codes returns the first minimal index, as `argmin` does, in half its time here.
        """
        codebook_aug_t = self._augmented_codebook_t()  # (D+2, K)
        z_flat = z_flat.float()
        count, codes = z_flat.shape[0], codebook_aug_t.shape[1]
        rows = max(1, min(count, _CHUNK_ELEMENTS.get(z_flat.device.type, _CHUNK_ELEMENTS_OTHER) // codes))
        out = torch.empty(count, dtype=torch.long, device=z_flat.device)
        distances = z_flat.new_empty(rows, codes)  # reused by every chunk
        nearest = z_flat.new_empty(rows)
        for start in range(0, count, rows):
            z = z_flat[start : start + rows]  # (n, D)
            n = len(z)
            z_aug = torch.cat([-2.0 * z, z.pow(2).sum(dim=1, keepdim=True), z.new_ones(n, 1)], dim=1)
            torch.mm(z_aug, codebook_aug_t, out=distances[:n])  # (n, K)
            torch.min(distances[:n], dim=1, out=(nearest[:n], out[start : start + n]))  # (n, K) -> (n,)
        return out

    def freeze(self) -> None:
        """Serving: let `nearest` reuse the augmented codebook (a (D+2, K) copy) instead of building it per call.

        Reuse is still keyed on the weight's storage, dtype, device and version, so a `load_state_dict`, `.to()`
        or in-place update after freezing is picked up; writes through `weight.data` are not, hence opt-in.
        """
        self._frozen = True

    def _augmented_codebook_t(self) -> torch.Tensor:
        """[e, 1, ||e||^2] for every code e, transposed to (D+2, K), in float32."""
        weight = self.embedding.weight
        key = (weight.data_ptr(), weight.dtype, weight.device, weight._version)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        codebook = weight.detach().float()
        ones = codebook.new_ones(codebook.shape[0], 1)
        codebook_aug = torch.cat([codebook, ones, codebook.pow(2).sum(dim=1, keepdim=True)], dim=1)  # (K, D+2)
        codebook_aug_t = codebook_aug.t().contiguous()
        if self._frozen:
            self._cached = (key, codebook_aug_t)
        return codebook_aug_t

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) integer indices -> (B, D, h, w) codebook vectors."""
        # (B, h, w, D) permuted: channels-last memory, which the convolutions after it prefer
        return F.embedding(indices.long(), self.embedding.weight).permute(0, 3, 1, 2)

    @torch.no_grad()
    def principal_colors(self) -> torch.Tensor:
        """(K, 3) uint8: each code vector projected on the codebook's first three principal components, as RGB.

        A code grid drawn in these colours shows which codes are alike (nearby vectors get nearby colours), where
        a colour per index shows noise. Each component is scaled to 0..255 between its 0.5th and 99.5th
        percentiles (clamped), so a few outlying codes do not grey out the rest. Deterministic: an exact
        eigendecomposition in float64 (not a randomized PCA), each component's sign fixed by its largest loading.
        A codebook of fewer than three dimensions (or of lower rank) gets mid-grey for the missing channels.
        """
        codebook = self.embedding.weight.detach().to(device="cpu", dtype=torch.float64)
        centred = codebook - codebook.mean(dim=0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
        components = vectors.flip(1)[:, :3]  # (D, min(3, D)), largest variance first
        largest = components.abs().argmax(dim=0, keepdim=True)
        components = components * torch.sign(components.gather(0, largest))
        projected = centred @ components  # (K, min(3, D))
        low = torch.quantile(projected, 0.005, dim=0)
        high = torch.quantile(projected, 0.995, dim=0)
        span = high - low
        flat = span <= 1e-12 * max(1.0, float(codebook.abs().max()))  # no variance along this component
        scaled = ((projected - low) / torch.where(flat, 1.0, span)).clamp(0.0, 1.0)
        scaled[:, flat] = 0.5
        rgb = torch.full((codebook.shape[0], 3), 0.5, dtype=torch.float64)
        rgb[:, : scaled.shape[1]] = scaled
        return (rgb * 255.0).round().to(torch.uint8)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, h, w) latents -> (quantized (B, D, h, w) in the latents' dtype, indices (B, h, w))."""
        b, d, h, w = latents.shape
        if d != self.embed_dim:
            raise ValueError(f"latents have {d} channels but the codebook vectors have {self.embed_dim}")
        z_flat = latents.permute(0, 2, 3, 1).reshape(-1, d)  # (B, D, h, w) -> (B*h*w, D)
        indices = self.nearest(z_flat).view(b, h, w)
        return self.lookup(indices).to(latents.dtype), indices
