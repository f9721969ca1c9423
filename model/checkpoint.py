"""Reading and writing diffusers' checkpoint directory format, safely.

A checkpoint is a directory (optionally a `subfolder` of it) holding `config.json` and the weights as
`diffusion_pytorch_model.safetensors` (preferred) or `diffusion_pytorch_model.bin`. `.bin` files are read with
`torch.load(weights_only=True)`: no pickle code ever runs. Legacy attention names are renamed on load.

A directory without `config.json` that holds one taming-transformers / latent-diffusion `.ckpt` and one `.yaml`
is read as well, converted in memory (`model.convert.taming`): every loader, the service included, serves it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, VQModelConfig
from .convert import taming

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
# Diffusers version written into saved configs: the format this package mirrors.
DIFFUSERS_FORMAT_VERSION = "0.42.1"

# Old attention blocks: query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"^(?P<path>.*attentions\.\d+)\.(?P<name>query|key|value|proj_attn)\.(?P<p>weight|bias)$")


class CheckpointError(FileNotFoundError):
    """A checkpoint directory that is missing files or holds weights that do not fit its config."""


def resolve_dir(path: str | Path, subfolder: str | None = None) -> Path:
    root = Path(path)
    directory = root / subfolder if subfolder else root
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not has_checkpoint(directory):
        raise CheckpointError(
            f"{directory} has no {CONFIG_NAME} (nor one taming-transformers .ckpt with its .yaml config)"
        )
    return directory


def taming_pair(directory: Path) -> tuple[Path, Path] | None:
    """The (ckpt, yaml) pair a directory without `config.json` is served from; None for diffusers' format."""
    return None if (directory / CONFIG_NAME).is_file() else taming.find_pair(directory)


def has_checkpoint(directory: Path) -> bool:
    """Whether `directory` holds a checkpoint this module reads: `config.json`, or a taming `.ckpt` + `.yaml`."""
    return (directory / CONFIG_NAME).is_file() or (directory.is_dir() and taming.find_pair(directory) is not None)


def load_config(directory: Path) -> VQModelConfig:
    pair = taming_pair(directory)
    if pair is not None:
        return taming.load_config(pair[1])
    return VQModelConfig.from_json_file(directory / CONFIG_NAME)


def rename_legacy_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old attention keys; 1x1-conv shaped projection weights become linear weights."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _LEGACY_RE.match(key)
        if match:
            key = f"{match['path']}.{_LEGACY_ATTENTION[match['name']]}.{match['p']}"
            if tensor.ndim == 4:  # (out, in, 1, 1) -> (out, in)
                tensor = tensor[:, :, 0, 0]
        out[key] = tensor
    return out


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint directory, safetensors first, else a weights-only `.bin` (or a taming pair's)."""
    pair = taming_pair(directory)
    if pair is not None:
        return taming.load(*pair)[1]
    safetensors_path = directory / SAFETENSORS_NAME
    bin_path = directory / BIN_NAME
    if safetensors_path.is_file():
        try:
            state = load_file(str(safetensors_path))
        except SafetensorError as exc:  # a cut-short or damaged file: its header or data do not add up
            raise CheckpointError(
                f"{safetensors_path} is not a readable safetensors file ({exc}); it may be cut short: copy or "
                "download it again"
            ) from exc
    elif bin_path.is_file():
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise CheckpointError(f"{bin_path} does not hold a state dict")
    else:
        raise CheckpointError(f"{directory} has neither {SAFETENSORS_NAME} nor {BIN_NAME}")
    return rename_legacy_keys(state)


def check_keys(expected: set[str], found: set[str]) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise CheckpointError(
            "checkpoint weights do not match its config: "
            f"missing keys {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )


def check_shapes(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Weights whose shapes differ from what the config builds, named (before `load_state_dict` lists them all)."""
    wrong = [
        (key, tuple(found[key].shape), tuple(value.shape))
        for key, value in expected.items()
        if key in found and found[key].shape != value.shape
    ]
    if wrong:
        shown = ", ".join(f"{key} is {got} (the config needs {want})" for key, got, want in wrong[:3])
        raise CheckpointError(
            f"checkpoint weights do not match its config: {len(wrong)} tensors have other shapes: {shown}"
            + (", ..." if len(wrong) > 3 else "")
        )


def save(directory: str | Path, config: VQModelConfig, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write `config.json` and `diffusion_pytorch_model.safetensors` as diffusers' `save_pretrained` does."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data = config.to_dict()
    data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
    (out / CONFIG_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out / SAFETENSORS_NAME), metadata={"format": "pt"})
    return out


__all__ = [
    "CheckpointError",
    "ConfigError",
    "has_checkpoint",
    "load_config",
    "load_state_dict",
    "resolve_dir",
    "save",
]
