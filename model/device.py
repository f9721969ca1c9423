"""Which torch device to run on: the one rule shared by the service and the training script."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device that was asked for but cannot be used here."""


def resolve_device(requested: str = "auto") -> torch.device:
    """`auto`: the first CUDA device when there is one, else the CPU; `cpu`, `cuda`, `cuda:N`, `mps` as named.

    A CUDA device asked for on a machine without CUDA is refused here, before any model is built on it."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise DeviceError(f"{requested!r} is not a torch device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} asked for but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {requested!r} asked for but this machine has {torch.cuda.device_count()} CUDA devices"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {requested!r} asked for but MPS (Apple's GPU) is not available on this machine")
    return device
