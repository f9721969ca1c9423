"""taming-transformers / latent-diffusion checkpoints: a `.ckpt` + `.yaml` pair read as a VQModel config + weights.

`load(checkpoint, config)` maps both (see `taming_config` and `taming_keys`); `find_pair(directory)` finds the
pair in a directory that has no `config.json`, which is how `model.checkpoint` (and so every loader, the service
included) serves such a directory directly. `vqserve convert --format taming` writes the diffusers directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import ConfigError, VQModelConfig
from . import lightning_ckpt, taming_config, taming_keys

CKPT_SUFFIXES = (".ckpt",)
YAML_SUFFIXES = (".yaml", ".yml")


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML config as plain data (`yaml.safe_load`: no object construction)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not a readable YAML file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping")
    return data


def load_config(config: Path) -> VQModelConfig:
    """The `VQModelConfig` a taming / latent-diffusion YAML describes."""
    return taming_config.to_vqmodel_config(read_yaml(config))


def load(checkpoint: Path, config: Path) -> tuple[VQModelConfig, dict[str, torch.Tensor]]:
    """(config, diffusers-keyed state dict) of a taming `.ckpt` + `.yaml` pair; key and shape checks are the
    loader's (`VQModel.from_taming` / `from_pretrained`)."""
    vq_config = load_config(config)
    state = lightning_ckpt.state_dict_of(lightning_ckpt.load_tensors(Path(checkpoint)), Path(checkpoint))
    return vq_config, taming_keys.to_diffusers(state, len(vq_config.block_out_channels))


def find_pair(directory: Path) -> tuple[Path, Path] | None:
    """(ckpt, yaml) when `directory` holds exactly one of each; None when it holds neither.

    More than one `.ckpt` or `.yaml` (or one without the other) is ambiguous: refused, naming the files."""
    files = sorted(p for p in Path(directory).iterdir() if p.is_file()) if Path(directory).is_dir() else []
    ckpts = [p for p in files if p.suffix in CKPT_SUFFIXES]
    yamls = [p for p in files if p.suffix in YAML_SUFFIXES]
    if not ckpts and not yamls:
        return None
    if len(ckpts) != 1 or len(yamls) != 1:
        raise ConfigError(
            f"{directory} must hold exactly one .ckpt and one .yaml to be read as a taming-transformers checkpoint; "
            f"found {[p.name for p in ckpts]} and {[p.name for p in yamls]}"
        )
    return ckpts[0], yamls[0]
