"""`ModelFacts`: what the rest of the service may know about a loaded model, fixed once at load.

The typed `VQModelConfig` carries the derived facts (`downsample_factor`, `codebook_size`, `embed_dim`,
`min_latent_area`); this adds the public name and where and in which dtypes the model runs. Input checks,
`ModelInfo`, the Open Inference Protocol metadata, metrics and the CLI all read this one object; nobody reads the
engine's model.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import VQModelConfig


@dataclass(frozen=True)
class ModelFacts:
    name: str  # the public name (the `model` query parameter)
    config: VQModelConfig
    device: str  # e.g. "cpu", "cuda:0"
    dtype: str  # the encoder's and quantizer's, e.g. "float32", "bfloat16"
    decoder_dtype: str  # post_quant_conv's and the decoder's (VQSERVE_DECODER_DTYPE); `dtype` unless set
