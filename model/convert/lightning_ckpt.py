"""Reading the tensors of a PyTorch Lightning `.ckpt` with `torch.load(weights_only=True)`, memory-mapped.

Lightning checkpoints (taming-transformers', latent-diffusion's) pickle more than weights: callback states keyed by
the callback's class (`pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`), numpy scalars, hyper-
parameters. The weights-only unpickler refuses such globals. Here each one the file names is allowlisted as an
inert stand-in class of our own (the documented `safe_globals((obj, "module.name"))` mechanism), so nothing from
the file runs: those entries load as empty placeholders and only tensors are kept. Zip-format files are
memory-mapped, so a full latent-diffusion checkpoint's UNet is never read into memory.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class CkptError(ValueError):
    """A `.ckpt` that does not hold a readable state dict."""


class Placeholder:
    """What an unknown pickled global loads as: accepts any construction and state, keeps none of it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _stand_ins(names: list[str]) -> list[tuple[type, str]]:
    """One distinct placeholder class per global name (classes pickled as dict keys must stay distinct)."""
    return [(type(f"Placeholder[{name}]", (Placeholder,), {}), name) for name in names]


def load_tensors(path: Path) -> dict[str, Any]:
    """The object a `.ckpt` holds, loaded weights-only with unknown globals as placeholders."""
    try:
        is_zip = zipfile.is_zipfile(path)
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if is_zip else []
    except (OSError, ValueError, RuntimeError) as exc:
        raise CkptError(f"{path} is not a torch checkpoint: {exc}") from exc
    if unknown:
        logger.info("%s: loading pickled globals %s as inert placeholders", path, sorted(unknown))
    try:
        with torch.serialization.safe_globals(_stand_ins(unknown)):  # type: ignore[arg-type]
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # the unpickler raises several types for a malformed or hostile file
        raise CkptError(f"{path} cannot be read as a weights-only torch checkpoint: {exc}") from exc
    if not isinstance(loaded, dict):
        raise CkptError(f"{path} holds a {type(loaded).__name__}, not a checkpoint dict")
    return loaded


def state_dict_of(loaded: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` entry of a Lightning checkpoint, or the dict itself when it is a bare state dict."""
    state = loaded.get("state_dict", loaded)
    if not isinstance(state, dict):
        raise CkptError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CkptError(f"{path} holds no tensors (neither a 'state_dict' entry nor a bare state dict)")
    return tensors
