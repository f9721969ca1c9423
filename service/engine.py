"""The engine: owns torch for one model.

Loads the checkpoint once, picks device and dtype, warms up, and computes whole batches of one `Op` on its own
single thread under `torch.inference_mode()`. It never sees a request: it takes CPU tensors of one shape and
returns CPU results (see `ops.py`). Everything that touches the model's device happens on that thread. The
batcher calls `compute`; in-process callers (the CLI) call `run`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from model import VQModel
from model.device import DeviceError, resolve_device
from model.pixels import to_uint8, to_unit_range

from .facts import ModelFacts
from .ops import Encoded, FloatDecode, LatentDecode, Op, OpParams, check_params, output_pixels
from .settings import ModelSpec, Settings, default_model_path

logger = logging.getLogger("vqserve.engine")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A configured model that cannot be served; the message names the path and the setting to change."""


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


def serving_device(requested: str) -> torch.device:
    """`resolve_device`, refusing as a load error that names the setting."""
    try:
        return resolve_device(requested)
    except DeviceError as exc:
        raise ModelLoadError(f"{exc} (VQSERVE_DEVICE / --device)") from exc


def resolve_dtype(requested: str, device: torch.device, force_upcast: bool) -> torch.dtype:
    """auto: half precision on GPU (bfloat16 where supported) unless the config forces upcast; float32 on CPU."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type != "cuda" or force_upcast:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def uint8_images(x: torch.Tensor) -> list[np.ndarray]:
    """(B, C, H, W) in ~[-1, 1] -> B arrays (H, W, C) uint8."""
    return list(to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())


class Engine:
    """One loaded model and the thread that runs it."""

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.name = spec.name
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{spec.name}")
        self.model: VQModel | None = None
        self.facts: ModelFacts | None = None  # set once loaded
        self._ops: dict[Op, Callable[[VQModel, torch.Tensor, Any], list[Any]]] = {
            Op.ENCODE: _encode,
            Op.RECONSTRUCT: _reconstruct,
            Op.DECODE_INDICES: _decode_indices,
            Op.DECODE_LATENTS: _decode_latents,
            Op.DECODE_FLOAT: _decode_float,
        }

    @property
    def ready(self) -> bool:
        return self.facts is not None

    # lifecycle
    def load(self) -> ModelFacts:
        """Load, move and warm up (blocking: call from a thread)."""
        return self._executor.submit(self._load).result()

    def _load(self) -> ModelFacts:
        check_checkpoint(self.spec)
        if self._settings.torch_threads:
            torch.set_num_threads(self._settings.torch_threads)
        device = serving_device(self._settings.device)
        started = time.perf_counter()
        try:
            model = VQModel.from_pretrained(self.spec.path, subfolder=self.spec.subfolder, device="cpu")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot load {self.spec.directory}: {exc}") from exc
        dtype = resolve_dtype(self._settings.dtype, device, model.config.force_upcast)
        self.model = model.to(device=device, dtype=dtype).optimize_for_inference()
        if self._settings.warmup:
            self._warm_up(self.model)
        self.facts = ModelFacts(self.name, model.config, str(device), str(dtype).removeprefix("torch."))
        logger.info(
            "model %s loaded from %s on %s as %s in %.2fs",
            self.name,
            self.spec.directory,
            self.facts.device,
            self.facts.dtype,
            time.perf_counter() - started,
        )
        return self.facts

    def _warm_up(self, model: VQModel) -> None:
        side = max(2 * model.downsample_factor, 64)
        x = torch.zeros(1, model.config.in_channels, side, side)
        (encoded,) = self._run(Op.ENCODE, [x[0]], check_params(Op.ENCODE, None))
        self._run(Op.DECODE_INDICES, [encoded.indices.long()], check_params(Op.DECODE_INDICES, None))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # what a batch costs the batch policy
    def cost(self, op: Op, shape: tuple[int, ...]) -> int:
        """Image pixels one item of `shape` stands for."""
        return output_pixels(op, shape, self._loaded().downsample_factor)

    # compute
    async def compute(self, op: Op, payloads: list[torch.Tensor], params: OpParams) -> list[Any]:
        """Run one batch on the engine thread; results align with `payloads`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_splitting, op, payloads, params)

    def run(self, op: Op, payloads: list[torch.Tensor], params: OpParams | None = None) -> list[Any]:
        """`compute` for in-process callers without an event loop (blocking)."""
        checked = check_params(op, params)
        return self._executor.submit(self._run_splitting, op, payloads, checked).result()

    def _loaded(self) -> VQModel:
        if self.model is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self.model

    def _run_splitting(self, op: Op, payloads: list[torch.Tensor], params: OpParams) -> list[Any]:
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

    def _run(self, op: Op, payloads: list[torch.Tensor], params: OpParams) -> list[Any]:
        model = self._loaded()
        with torch.inference_mode():
            batch = torch.stack(payloads).to(model.device)  # B x (item shape)
            return self._ops[op](model, batch, params)


# the ops, on the engine thread under inference mode; `batch` is on the model's device
def _encode(model: VQModel, batch: torch.Tensor, params: Any) -> list[Any]:
    latents = model.encode(batch.to(model.dtype))  # (B, D, h, w)
    _, indices = model.quantize(latents)  # (B, h, w)
    indices_cpu = indices.to(torch.int32).cpu()
    latents_cpu = latents.float().cpu()
    return [Encoded(indices_cpu[i], latents_cpu[i]) for i in range(len(batch))]


def _reconstruct(model: VQModel, batch: torch.Tensor, params: Any) -> list[Any]:
    _, indices = model.quantize(model.encode(batch.to(model.dtype)))
    return uint8_images(model.decode_indices(indices))


def _decode_indices(model: VQModel, batch: torch.Tensor, params: Any) -> list[Any]:
    return uint8_images(model.decode_indices(batch.long()))


def _decode_latents(model: VQModel, batch: torch.Tensor, params: LatentDecode) -> list[Any]:
    latents = batch.float()
    if params.scaling_factor is not None:
        latents = latents / params.scaling_factor
    return uint8_images(model.decode(latents.to(model.dtype), force_not_quantize=params.force_not_quantize))


def _decode_float(model: VQModel, batch: torch.Tensor, params: FloatDecode) -> list[Any]:
    images = model.decode(batch.to(model.dtype), force_not_quantize=params.force_not_quantize)  # (B, C, H, W)
    if params.unit_range:
        images = to_unit_range(images)
    return list(images.cpu().unbind(0))
