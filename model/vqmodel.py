"""`VQModel`: diffusers' VQ-VAE / VQGAN autoencoder in plain PyTorch, checkpoint-compatible with it.

Same config fields, same state-dict keys, the same outputs (see tests/model/test_parity.py). The serving code uses
`encode` -> `quantize` -> `decode_indices`; `decode` and `forward` keep diffusers' semantics for callers that
hand latents around (diffusion pipelines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint
from . import tiling as tiled
from .autoencoder import Decoder, Encoder
from .config import VQModelConfig
from .convert import taming
from .layers import Upsample
from .quantizer import VectorQuantizer
from .tiling import TileConfig


class VQModel(nn.Module):
    def __init__(self, config: VQModelConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is None:
            config = VQModelConfig(**fields)
        elif fields:
            raise TypeError("pass either a VQModelConfig or config fields, not both")
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.embed_dim, kernel_size=1)
        self.quantize = VectorQuantizer(config.num_vq_embeddings, config.embed_dim)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, kernel_size=1)
        self.decoder = Decoder(config)
        self.tiling: TileConfig | None = None  # enable_tiling(): inputs larger than one tile go through tiles

    # tiling, with the names of diffusers' AutoencoderKL
    def enable_tiling(self, tile_size: int = 512, tile_overlap: int = 64, preview_side: int = 1024) -> VQModel:
        """Encode and decode inputs larger than `tile_size` pixels a side in overlapping tiles (bounded memory);
        inputs no larger than one tile run untiled, bit for bit. See `model/tiling.py`."""
        self.tiling = TileConfig(tile_size, tile_overlap, preview_side)
        return self

    def disable_tiling(self) -> VQModel:
        self.tiling = None
        return self

    def _tiled(self, height: int, width: int) -> TileConfig | None:
        """The tile config when an input of (height, width) pixels needs tiles."""
        tiling = self.tiling
        return tiling if tiling is not None and max(height, width) > tiling.tile_size else None

    # properties the service reports
    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def decoder_dtype(self) -> torch.dtype:
        """The dtype `post_quant_conv` and the decoder compute in; `dtype` (encoder, quantizer) unless changed by
        `set_decoder_dtype`."""
        return self.decoder.conv_in.weight.dtype

    def set_decoder_dtype(self, dtype: torch.dtype) -> VQModel:
        """Run `post_quant_conv` and the decoder in `dtype`, leaving the encoder and the quantizer as they are.

        Why: code indices come from the encoder and the nearest-code search alone, so they stay exactly those of
        a float32 model (diffusers' own) while the decoder, most of a reconstruct's work, runs in half precision.
        Decoder outputs are cast back to the quantized latents' dtype. Memory format is kept. Returns self."""
        self.post_quant_conv.to(dtype)
        self.decoder.to(dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    # the autoencoder
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_channels, H, W) in [-1, 1] -> latents (B, vq_embed_dim, H/f, W/f), before quantization."""
        tiling = self._tiled(x.shape[-2], x.shape[-1])
        if tiling is not None:
            return tiled.encode_tiled(self, x, tiling)
        return self.quant_conv(self.encoder(x))

    def decode(self, latents: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Latents (B, vq_embed_dim, h, w) -> images (B, out_channels, h*f, w*f), as diffusers' `decode`.

        The latents are quantized first unless `force_not_quantize`. An integer tensor (B, h, w) is taken as code
        indices (diffusers' `lookup_from_codebook` path).
        """
        if not latents.is_floating_point():
            return self.decode_indices(latents)
        quantized = latents if force_not_quantize else self.quantize(latents)[0]
        return self._decode_quantized_maybe_tiled(quantized)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) -> images (B, out_channels, h*f, w*f) through codebook lookup."""
        if indices.ndim != 3:
            raise ValueError(f"indices must be shaped (B, h, w), got {tuple(indices.shape)}")
        return self._decode_quantized_maybe_tiled(self.quantize.lookup(indices).to(self.dtype))

    def decode_quantized(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latents (B, vq_embed_dim, h, w) -> images in the latents' dtype, untiled.

        The decoder computes in `decoder_dtype` (see `set_decoder_dtype`)."""
        inner = quantized.to(self.decoder_dtype)
        # the spatial-norm decoder is conditioned on the quantized latents themselves
        return self.decoder(self.post_quant_conv(inner), inner).to(quantized.dtype)

    def _decode_quantized_maybe_tiled(self, quantized: torch.Tensor) -> torch.Tensor:
        factor = self.downsample_factor
        tiling = self._tiled(quantized.shape[-2] * factor, quantized.shape[-1] * factor)
        if tiling is not None:
            return tiled.decode_tiled(self, quantized, tiling)
        return self.decode_quantized(quantized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> reconstructions through the codebook."""
        return self.decode(self.encode(x))

    def optimize_for_inference(self, channels_last: bool = True) -> VQModel:
        """Eval mode, no autograd, fused upsampling convs and (by default) channels-last weights; returns self.

        Measured in bench/README.md: channels-last lets oneDNN skip layout conversions on every conv.
        """
        self.eval().requires_grad_(False)
        self.quantize.freeze()
        for module in self.modules():
            if isinstance(module, Upsample):
                module.fuse()
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack the kwarg
        return self

    # checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        subfolder: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> VQModel:
        """Load a diffusers-format directory (`config.json` + weights) with strict key checking.

        A directory holding a taming-transformers / latent-diffusion `.ckpt` + `.yaml` instead is converted in
        memory (`model.checkpoint`)."""
        directory = checkpoint.resolve_dir(path, subfolder)
        model = cls._from_state(checkpoint.load_config(directory), checkpoint.load_state_dict(directory))
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_taming(cls, checkpoint_path: str | Path, config_path: str | Path) -> VQModel:
        """Load a taming-transformers / latent-diffusion `.ckpt` with its `.yaml` (`model.convert.taming`)."""
        return cls._from_state(*taming.load(Path(checkpoint_path), Path(config_path)))

    @classmethod
    def _from_state(cls, config: VQModelConfig, state: dict[str, torch.Tensor]) -> VQModel:
        """A model in eval mode holding exactly `state` (every key, every shape, or `CheckpointError`)."""
        model = cls(config)
        checkpoint.check_keys(set(model.state_dict()), set(state))
        checkpoint.check_shapes(model.state_dict(), state)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # shapes that do not fit the config
            raise checkpoint.CheckpointError(f"checkpoint weights do not fit its config: {exc}") from exc
        return model.eval().requires_grad_(False)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the checkpoint that diffusers' `VQModel.from_pretrained` loads."""
        return checkpoint.save(path, self.config, self.state_dict())
