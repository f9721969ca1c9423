"""A prior's files: `config.json` + `prior.safetensors` in the `prior/` subfolder of its VQ checkpoint.

Weights are read with safetensors only (no pickle). `diffusion_pytorch_model.safetensors` is accepted too, so a
prior folder may follow the VQ model's naming.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CONFIG_NAME, CheckpointError, resolve_dir

from .config import PriorConfig

PRIOR_SUBFOLDER = "prior"  # where a VQ checkpoint directory keeps its prior
WEIGHTS_NAME = "prior.safetensors"
WEIGHTS_NAMES = (WEIGHTS_NAME, "diffusion_pytorch_model.safetensors")  # read in this order
FORMAT_VERSION = 1  # written as `_vqserve_format`


def prior_dir(path: str | Path) -> Path:
    """The folder of a prior: `path` itself, checked for a config.json."""
    return resolve_dir(path)


def read_config(directory: Path) -> PriorConfig:
    return PriorConfig.from_json_file(directory / CONFIG_NAME)


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHTS_NAMES:
        if (directory / name).is_file():
            return load_file(str(directory / name))
    raise CheckpointError(f"{directory} has none of {', '.join(WEIGHTS_NAMES)}")


def write(directory: str | Path, config: PriorConfig, state_dict: dict[str, torch.Tensor]) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data = {**config.to_dict(), "_vqserve_format": FORMAT_VERSION}
    (out / CONFIG_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return out
