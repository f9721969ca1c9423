"""The prior's configuration: what `config.json` in a VQ checkpoint's `prior/` folder holds, validated.

Unlike `VQModelConfig` (which must read whatever diffusers wrote), this format is ours, so an unknown key is an
error naming the key: a typo in a hand-edited config must not silently give a different network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import ConfigError, read_json_object

CLASS_NAME = "PixelCNNPrior"
_BOOKKEEPING_KEYS = frozenset({"_class_name", "_diffusers_version", "_vqserve_format"})


@dataclass(frozen=True)
class PriorConfig:
    """A gated PixelCNN over a (H, W) grid of codes from a codebook of `num_vq_embeddings`."""

    num_vq_embeddings: int  # K: the VQ model's codebook size (checked against it at load)
    grid_size: tuple[int, int]  # (H, W) of the code grids it was trained on; other sizes run (fully convolutional)
    num_labels: int = 0  # classes of a conditional prior; label index `num_labels` means "no label"; 0 = none
    hidden_channels: int = 64  # width of both stacks
    num_layers: int = 6  # gated layers; each widens the receptive field by one row up and one column each side
    kernel_size: int = 3  # odd; the vertical stack sees (k // 2 + 1) x k, the horizontal 1 x (k // 2 + 1)
    output_channels: int = 128  # width of the two 1x1 layers that turn features into K logits
    dropout: float = 0.0  # on each gated layer's output, training only

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid_size", tuple(self.grid_size))
        self._validate()

    @property
    def unlabelled(self) -> int:
        """The label index that stands for "no label" (the dropped label of training)."""
        return self.num_labels

    @property
    def conditional(self) -> bool:
        return self.num_labels > 0

    def _validate(self) -> None:
        def positive(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"prior config field {name!r} must be a positive integer, got {value!r}")

        for name in ("num_vq_embeddings", "hidden_channels", "num_layers", "kernel_size", "output_channels"):
            positive(name, getattr(self, name))
        if len(self.grid_size) != 2:
            raise ConfigError(f"prior config field 'grid_size' must be [H, W], got {list(self.grid_size)}")
        for side in self.grid_size:
            positive("grid_size", side)
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 0:
            raise ConfigError(f"prior config field 'num_labels' must be an integer >= 0, got {self.num_labels!r}")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"prior config field 'kernel_size' must be odd, got {self.kernel_size}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"prior config field 'dropout' must be in [0, 1), got {self.dropout!r}")

    # serialization
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriorConfig:
        """Build from a config.json dict; an unknown key or a missing required one is refused by name."""
        class_name = data.get("_class_name", CLASS_NAME)
        if class_name != CLASS_NAME:
            raise ConfigError(f"config.json describes a {class_name!r}, not a {CLASS_NAME!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in fields and k not in _BOOKKEEPING_KEYS)
        if unknown:
            raise ConfigError(f"unknown prior config field {unknown[0]!r} (known: {sorted(fields)})")
        missing = [
            name
            for name, f in fields.items()
            if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"prior config field {missing[0]!r} is required")
        kwargs = {k: v for k, v in data.items() if k in fields}
        if not isinstance(kwargs["grid_size"], list | tuple):
            raise ConfigError(f"prior config field 'grid_size' must be [H, W], got {kwargs['grid_size']!r}")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> PriorConfig:
        return cls.from_dict(read_json_object(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict, with `_class_name`; lists, not tuples."""
        out: dict[str, Any] = {"_class_name": CLASS_NAME}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
