"""`ModelFacts`: what the rest of the service may know about a loaded model, fixed once at load.

The typed `VQModelConfig` carries the derived facts (`downsample_factor`, `codebook_size`, `embed_dim`,
`min_latent_area`); this adds the public name, where and in which dtypes the model runs, where its checkpoint came
from, the codebook's colours (for pictures of code grids) and the config of its learned prior when the checkpoint has
one (`prior/`). Input checks, `ModelInfo`, the Open Inference Protocol metadata, metrics, the CLI and the web page's
colours all read this one object; nobody reads the engine's model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.config import VQModelConfig
from model.prior import PriorConfig


@dataclass(frozen=True)
class LocalSource:
    """A checkpoint read from a local directory (`ModelInfo.source` is `{"path": ..., "subfolder": ...}`)."""

    path: str  # the configured directory, absolute
    subfolder: str | None

    def describe(self) -> str:
        return self.path + (f" (subfolder {self.subfolder})" if self.subfolder else "")


@dataclass(frozen=True)
class HubSource:
    """A checkpoint fetched from (or found cached for) a Hugging Face Hub repo (`service/model_source.py`)."""

    repo: str  # "org/name"
    revision: str  # the commit hash of the snapshot served
    ref: str  # the revision asked for ("main" unless `org/name@ref` named one), which resolved to `revision`
    subfolder: str | None

    def describe(self) -> str:
        return (
            f"Hub repo {self.repo} at {self.ref}"
            + (f" (commit {self.revision})" if self.revision != self.ref else "")
            + (f", subfolder {self.subfolder}" if self.subfolder else "")
        )


ModelSource = LocalSource | HubSource


@dataclass(frozen=True)
class ModelFacts:
    name: str  # the public name (the `model` query parameter)
    config: VQModelConfig
    device: str  # e.g. "cpu", "cuda:0"
    dtype: str  # the encoder's and quantizer's, e.g. "float32", "bfloat16"
    decoder_dtype: str  # post_quant_conv's and the decoder's (VQSERVE_DECODER_DTYPE); `dtype` unless set
    source: ModelSource
    # one [r, g, b] per code: the codebook's first three principal components (`GET /models/{name}/codebook/colors`);
    # computed once at load, from the checkpoint's weights before they are cast for the device
    codebook_colors: tuple[tuple[int, int, int], ...] = field(default=(), repr=False, compare=False)
    prior: PriorConfig | None = None  # the prior over the codes (/generate, /complete, return_nll); None: none
