"""A learnt prior over a VQ model's codes: a gated PixelCNN (van den Oord et al. 2016), optionally class-conditional.

The VQ-VAE paper's point is that the prior over the latent codes is learnt rather than fixed; this is that prior,
in plain PyTorch (no service imports). A VQ checkpoint directory may hold one in its `prior/` subfolder
(`config.json` + `prior.safetensors`); `load_prior_for` finds it and refuses one built for another codebook size.

- `PixelCNNPrior(config)(indices (B, H, W), labels (B,) | None) -> logits (B, K, H, W)`, causal in raster order;
- `nll_bits(prior, indices, labels) -> (B,)` bits per code;
- `sample_cell` (one draw, the step the service batches) and `sample` (the in-process loop, with `mask` for
  completion). Labels: 0 .. num_labels - 1, and -1 / None (or `num_labels`) for "no label".

Training: `python -m model.train_prior --vq DIR` (model/train_prior.py); the shipped digits prior's card is
`model/weights/digits/prior/README.md`.
"""

from .checkpoint import PRIOR_SUBFOLDER
from .config import PriorConfig
from .likelihood import bits_per_code, nll_bits
from .loading import load_prior_for
from .network import PixelCNNPrior
from .sampling import generator_for, sample, sample_cell

__all__ = [
    "PRIOR_SUBFOLDER",
    "PixelCNNPrior",
    "PriorConfig",
    "bits_per_code",
    "generator_for",
    "load_prior_for",
    "nll_bits",
    "sample",
    "sample_cell",
]
