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


# CPU features that make bfloat16 faster than float32 (x86 AVX-512 BF16 or AMX; Arm's BF16 extension). Without
# them torch emulates bfloat16 through float32 conversions and is slower than float32 itself.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of `/proc/cpuinfo` text (x86 `flags`, Arm `Features` lines), first processor's."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively: from `cpuinfo` text when given (tests pass fake flags), else
    from /proc/cpuinfo, else (no procfs: macOS, Windows) from oneDNN's own probe."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
            return bool(probe()) if probe is not None else False
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_CPU_FLAGS)
