"""A diffusers-compatible VQModel (VQ-VAE / VQGAN) in plain PyTorch. Never imports the service."""

from .checkpoint import CheckpointError
from .config import ConfigError, VQModelConfig
from .vqmodel import VQModel

__all__ = ["CheckpointError", "ConfigError", "VQModel", "VQModelConfig"]
