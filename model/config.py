"""The VQModel configuration: diffusers' `config.json` fields, names and defaults, validated.

This module only describes a model; it never builds one. Unknown keys of a config.json are ignored with a logged
note (checkpoints carry bookkeeping such as `_class_name`), invalid values raise `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DOWN_BLOCK_TYPES = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
UP_BLOCK_TYPES = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")
ACTIVATIONS = ("silu", "swish", "mish", "gelu", "relu")
NORM_TYPES = ("group", "spatial")
# Keys diffusers writes for its own bookkeeping: ignored silently.
_BOOKKEEPING_KEYS = frozenset({"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"})


class ConfigError(ValueError):
    """A config.json value that no VQModel can be built from."""


@dataclass(frozen=True)
class VQModelConfig:
    """Every constructor field of diffusers' `VQModel`, with the same defaults."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int = 32  # informational: the training resolution
    num_vq_embeddings: int = 256  # codebook size
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None  # codebook vector width; None means latent_channels
    scaling_factor: float = 0.18215  # diffusion pipelines multiply latents by it
    norm_type: str = "group"  # "spatial": decoder norms conditioned on the quantized latents (MoVQ)
    mid_block_add_attention: bool = True
    # diffusers: decode(force_not_quantize=True) takes indices; here decode() takes an integer tensor as indices
    # whatever this says (and decode_indices always does), so the field is carried for checkpoint fidelity only
    lookup_from_codebook: bool = False
    force_upcast: bool = False  # run in float32 even where half precision is asked for
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._validate()

    # derived values
    @property
    def embed_dim(self) -> int:
        """Width of one codebook vector."""
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels

    @property
    def downsample_factor(self) -> int:
        return int(2 ** (len(self.block_out_channels) - 1))

    @property
    def codebook_size(self) -> int:
        return self.num_vq_embeddings

    @property
    def min_latent_area(self) -> int:
        """The fewest latent cells (h * w) the model can compute for one image.

        GroupNorm refuses a group of a single value, and at the latent resolution the norms see the last two
        block_out_channels (C channels, h * w cells, C / norm_num_groups channels per group): with one channel
        per group a 1x1 latent (a 1x1 image, a 1x1 index map) would fail inside the model."""
        channels = min(self.block_out_channels[-2:])
        return 1 if channels // self.norm_num_groups >= 2 else 2

    def _validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")

        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "sample_size"):
            positive(name)
        for name in ("num_vq_embeddings", "norm_num_groups"):
            positive(name)
        if self.vq_embed_dim is not None:
            positive("vq_embed_dim")
        if not self.block_out_channels:
            raise ConfigError("config field 'block_out_channels' must not be empty")
        for channels in self.block_out_channels:
            if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
                raise ConfigError(f"block_out_channels must be positive integers, got {self.block_out_channels}")
            if channels % self.norm_num_groups:
                raise ConfigError(
                    f"every block_out_channels value must be divisible by norm_num_groups={self.norm_num_groups}, "
                    f"got {self.block_out_channels}"
                )
        n_blocks = len(self.block_out_channels)
        for name, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
            types = getattr(self, name)
            if len(types) != n_blocks:
                raise ConfigError(f"{name} has {len(types)} entries but block_out_channels has {n_blocks}")
            for block_type in types:
                if block_type not in allowed:
                    raise ConfigError(f"{name} entry {block_type!r} is not supported; use one of {allowed}")
        if self.act_fn not in ACTIVATIONS:
            raise ConfigError(f"act_fn {self.act_fn!r} is not supported; use one of {ACTIVATIONS}")
        if self.norm_type not in NORM_TYPES:
            raise ConfigError(f"norm_type {self.norm_type!r} is not supported; use one of {NORM_TYPES}")
        if self.norm_type == "spatial":
            if self.embed_dim != self.latent_channels:
                raise ConfigError("norm_type 'spatial' needs vq_embed_dim equal to latent_channels")
            if any(c % 32 for c in self.block_out_channels):
                raise ConfigError("norm_type 'spatial' uses 32 groups: block_out_channels must divide by 32")
        if not isinstance(self.scaling_factor, int | float) or self.scaling_factor == 0:
            raise ConfigError(f"scaling_factor must be a non-zero number, got {self.scaling_factor!r}")

    # serialization
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQModelConfig:
        """Build from a config.json dict; unknown keys are kept in `extra` and logged, not fatal."""
        known = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        class_name = data.get("_class_name", "VQModel")
        if class_name != "VQModel":
            raise ConfigError(f"config.json describes a {class_name!r}, not a 'VQModel'")
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k not in _BOOKKEEPING_KEYS}
        if extra:
            logger.info("ignoring config keys VQModel does not use: %s", sorted(extra))
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as exc:  # e.g. a list where an int belongs
            raise ConfigError(f"invalid config value: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: str | Path) -> VQModelConfig:
        return cls.from_dict(read_json_object(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict diffusers writes (lists, not tuples), with `_class_name`."""
        out: dict[str, Any] = {"_class_name": "VQModel"}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A config file's JSON object, or `ConfigError` naming the file (the VQ model's and the prior's configs)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data
