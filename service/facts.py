"""`ModelFacts`: what the rest of the service may know about a loaded model, fixed once at load.

The typed `VQModelConfig` carries the derived facts (`downsample_factor`, `codebook_size`, `embed_dim`,
`min_latent_area`); this adds the public name, where the model runs and the codebook's colours (for pictures of
code grids). Input checks, `ModelInfo`, the Open Inference Protocol metadata, metrics, the CLI and the web page's
colours all read this one object; nobody reads the engine's model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.config import VQModelConfig


@dataclass(frozen=True)
class ModelFacts:
    name: str  # the public name (the `model` query parameter)
    config: VQModelConfig
    device: str  # e.g. "cpu", "cuda:0"
    dtype: str  # e.g. "float32", "bfloat16"
    # one [r, g, b] per code: the codebook's first three principal components (`GET /models/{name}/codebook/colors`);
    # computed once at load, from the checkpoint's weights before they are cast for the device
    codebook_colors: tuple[tuple[int, int, int], ...] = field(default=(), repr=False, compare=False)
