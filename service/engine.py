"""The engine: owns torch for one model.

Loads the checkpoint once, picks device and dtype, warms up, and computes whole batches on its own single thread
under `torch.inference_mode()`. It never sees a request: it takes stacked-able CPU tensors and returns CPU
results (indices, latents, uint8 images). Everything that touches the model's device happens on that thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model import VQModel

from .settings import ModelSpec, Settings, default_model_path

logger = logging.getLogger("vqserve.engine")

OPS = ("encode", "reconstruct", "decode_indices", "decode_latents")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A configured model that cannot be served; the message names the path and the setting to change."""


@dataclass(frozen=True)
class EncodeResult:
    indices: torch.Tensor  # (h, w) int32
    latents: torch.Tensor  # (D, h, w) float32, after quant_conv, before quantization


def check_checkpoint(spec: ModelSpec) -> None:
    """Refuse a model path without a checkpoint with a message naming the path and the settings to change.

    `python -m service` calls it before starting (exit 2, no traceback); loading calls it for app users."""
    if not (spec.directory / "config.json").is_file():
        shipped = spec.path.resolve() == default_model_path().resolve()
        raise ModelLoadError(
            f"model {spec.name!r}: no checkpoint at {spec.directory} (config.json missing). Point VQSERVE_MODEL_PATH "
            f"/ --model-path (or VQSERVE_MODELS=name=path) at a diffusers-format VQModel directory"
            + (", or train the default one with `make train`" if shipped else "")
        )


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} asked for (VQSERVE_DEVICE / --device) but CUDA is not available")
    return device


def resolve_dtype(requested: str, device: torch.device, force_upcast: bool) -> torch.dtype:
    """auto: half precision on GPU (bfloat16 where supported) unless the config forces upcast; float32 on CPU."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type != "cuda" or force_upcast:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_uint8_images(x: torch.Tensor) -> list[np.ndarray]:
    """(B, C, H, W) in ~[-1, 1] -> B arrays (H, W, C) uint8, rounded as diffusers' postprocessing does."""
    images = x.float().clamp_(-1.0, 1.0).add_(1.0).mul_(127.5).round_().to(torch.uint8)
    return list(images.permute(0, 2, 3, 1).cpu().numpy())


class Engine:
    """One loaded model and the thread that runs it."""

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.name = spec.name
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{spec.name}")
        self.model: VQModel | None = None
        self.ready = False

    # lifecycle
    def load(self) -> None:
        """Load, move and warm up (blocking: call from a thread)."""
        self._executor.submit(self._load).result()

    def _load(self) -> None:
        check_checkpoint(self.spec)
        path, directory = self.spec.path, self.spec.directory
        if self._settings.torch_threads:
            torch.set_num_threads(self._settings.torch_threads)
        device = resolve_device(self._settings.device)
        started = time.perf_counter()
        try:
            model = VQModel.from_pretrained(path, subfolder=self.spec.subfolder, device="cpu")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot load {directory}: {exc}") from exc
        dtype = resolve_dtype(self._settings.dtype, device, model.config.force_upcast)
        self.model = model.to(device=device, dtype=dtype).optimize_for_inference()
        if self._settings.warmup:
            self._warm_up()
        self.ready = True
        logger.info(
            "model %s loaded from %s on %s as %s in %.2fs",
            self.name,
            directory,
            device,
            str(dtype).removeprefix("torch."),
            time.perf_counter() - started,
        )

    def _warm_up(self) -> None:
        side = max(2 * self.downsample_factor, 64)
        x = torch.zeros(1, self.in_channels, side, side)
        encoded = self._run("encode", [x[0]], ())
        self._run("decode_indices", [encoded[0].indices.long()], ())

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # facts the service reports
    def _loaded(self) -> VQModel:
        if self.model is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self.model

    @property
    def config(self) -> dict[str, Any]:
        return self._loaded().config.to_dict()

    @property
    def downsample_factor(self) -> int:
        return self._loaded().downsample_factor

    @property
    def codebook_size(self) -> int:
        return self._loaded().codebook_size

    @property
    def in_channels(self) -> int:
        return self._loaded().config.in_channels

    @property
    def out_channels(self) -> int:
        return self._loaded().config.out_channels

    @property
    def latent_channels(self) -> int:
        return self._loaded().config.latent_channels

    @property
    def embed_dim(self) -> int:
        return self._loaded().config.embed_dim

    @property
    def device(self) -> str:
        return str(self._loaded().device)

    @property
    def dtype(self) -> str:
        return str(self._loaded().dtype).removeprefix("torch.")

    # compute
    async def compute(self, op: str, payloads: list[torch.Tensor], params: tuple[Any, ...]) -> list[Any]:
        """Run one batch on the engine thread; results align with `payloads`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_splitting, op, payloads, params)

    def _run_splitting(self, op: str, payloads: list[torch.Tensor], params: tuple[Any, ...]) -> list[Any]:
        """`_run`, but a batch that runs out of GPU memory is split in halves and retried, down to single items;
        a single item that still does not fit fails its batch (500) like any other engine error."""
        try:
            return self._run(op, payloads, params)
        except torch.cuda.OutOfMemoryError:
            if len(payloads) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(payloads) // 2
            logger.warning(
                "model %s: out of memory on a batch of %d %s items; retrying as %d + %d",
                self.name,
                len(payloads),
                op,
                half,
                len(payloads) - half,
            )
            first = self._run_splitting(op, payloads[:half], params)
            return first + self._run_splitting(op, payloads[half:], params)

    async def run_on_thread(self, fn: Any, *args: Any) -> Any:
        """Run `fn(model, *args)` on the engine thread under inference mode, for protocol adapters whose outputs
        no batch op returns (e.g. raw float images for diffusers' remote decode)."""
        model = self._loaded()

        def call() -> Any:
            with torch.inference_mode():
                return fn(model, *args)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _run(self, op: str, payloads: list[torch.Tensor], params: tuple[Any, ...]) -> list[Any]:
        model = self._loaded()
        with torch.inference_mode():
            batch = torch.stack(payloads).to(model.device)  # B x (item shape)
            if op == "encode":
                latents = model.encode(batch.to(model.dtype))  # (B, D, h, w)
                _, indices = model.quantize(latents)  # (B, h, w)
                indices_cpu = indices.to(torch.int32).cpu()
                latents_cpu = latents.float().cpu()
                return [EncodeResult(indices_cpu[i], latents_cpu[i]) for i in range(len(payloads))]
            if op == "reconstruct":
                _, indices = model.quantize(model.encode(batch.to(model.dtype)))
                return to_uint8_images(model.decode_indices(indices))
            if op == "decode_indices":
                return to_uint8_images(model.decode_indices(batch.long()))
            if op == "decode_latents":
                force_not_quantize, scaling_factor = params
                latents = batch.float()
                if scaling_factor is not None:
                    latents = latents / scaling_factor
                return to_uint8_images(model.decode(latents.to(model.dtype), force_not_quantize=force_not_quantize))
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
