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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import torch

from model import VQModel
from model.device import DeviceError, cpu_has_native_bf16, resolve_device
from model.pixels import to_uint8, to_unit_range
from model.tiling import NormStats, activation_bytes_per_pixel, decode_tile, encode_tile, record_norm_stats

from .batching import Cost
from .facts import ModelFacts
from .memory import release_free_memory
from .ops import Encoded, FloatDecode, LatentDecode, Op, OpParams, Payload, Tile, check_params, output_pixels
from .settings import ModelSpec, Settings, default_model_path
from .transfer import Transfers

logger = logging.getLogger("vqserve.engine")

TRIM_AFTER_BYTES = 64 << 20  # batches whose activations may exceed this hand freed memory back afterwards
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


def resolve_decoder_dtype(
    requested: str,
    model_dtype: torch.dtype,
    device: torch.device,
    native_bf16: Callable[[], bool] = cpu_has_native_bf16,
) -> torch.dtype:
    """VQSERVE_DECODER_DTYPE: `auto` is the model's dtype (VQSERVE_DTYPE); bfloat16 is refused where it would be
    slower than float32 (a CPU without native bf16, `native_bf16()` false; a GPU without bf16), as a load error
    naming the setting. `native_bf16` is the CPU probe (tests pass one reading fake /proc/cpuinfo flags)."""
    if requested == "auto":
        return model_dtype
    dtype = _DTYPES[requested]
    if dtype == torch.bfloat16:
        if device.type == "cpu" and not native_bf16():
            raise ModelLoadError(
                "VQSERVE_DECODER_DTYPE / --decoder-dtype bfloat16 needs a CPU with native bf16 (avx512_bf16 or "
                "amx_bf16) and this one has neither (it would run slower than float32): use auto or float32"
            )
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ModelLoadError(f"VQSERVE_DECODER_DTYPE bfloat16: {device} does not support bfloat16; use float16")
    return dtype


def check_precision(settings: Settings) -> None:
    """Refuse device and decoder dtype settings that cannot run here, before the server starts (`python -m service`
    exits 2 with the one line); loading checks the same for app users. VQSERVE_DTYPE auto never fails (it is
    float32 on CPU), so the decoder's check only needs an explicit dtype's facts."""
    device = serving_device(settings.device)
    model_dtype = _DTYPES.get(settings.dtype, torch.float32)
    resolve_decoder_dtype(settings.decoder_dtype, model_dtype, device)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@cache
def transfers(device: torch.device) -> Transfers:
    """One set of copy buffers and streams per device, shared by the engines on it."""
    return Transfers(device)


def host(x: torch.Tensor) -> torch.Tensor:
    """A result on the CPU (pinned and non-blocking from a GPU; see `transfer.py`)."""
    return transfers(x.device).to_host(x)


def uint8_images(x: torch.Tensor) -> list[np.ndarray]:
    """(B, C, H, W) in ~[-1, 1] -> B arrays (H, W, C) uint8."""
    return list(host(to_uint8(x).permute(0, 2, 3, 1)).numpy())


class Engine:
    """One loaded model and the thread that runs it."""

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.name = spec.name
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{spec.name}")
        self.model: VQModel | None = None
        self.facts: ModelFacts | None = None  # set once loaded
        self.bytes_per_pixel = 0  # activation memory per image pixel on the device (set at load)
        self._ops: dict[Op, Callable[[VQModel, list[Any], Any], list[Any]]] = {
            Op.ENCODE: _encode,
            Op.RECONSTRUCT: _reconstruct,
            Op.DECODE_INDICES: _decode_indices,
            Op.DECODE_LATENTS: _decode_latents,
            Op.DECODE_FLOAT: _decode_float,
            Op.ENCODE_STATS: _encode_stats,
            Op.ENCODE_TILE: _encode_tile,
            Op.QUANTIZE: _quantize,
            Op.DECODE_STATS: _decode_stats,
            Op.DECODE_TILE: _decode_tile,
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
        decoder_dtype = resolve_decoder_dtype(self._settings.decoder_dtype, dtype, device)
        # fused upsampling weights are built in the load dtype, then the decoder is cast
        self.model = model.to(device=device, dtype=dtype).optimize_for_inference().set_decoder_dtype(decoder_dtype)
        itemsize = max(dtype.itemsize, decoder_dtype.itemsize)
        self.bytes_per_pixel = activation_bytes_per_pixel(model.config, itemsize)
        if self._settings.warmup:
            self._warm_up(self.model)
            if device.type == "cuda":
                self.bytes_per_pixel = self._measured_bytes_per_pixel(self.model)
        self.facts = ModelFacts(self.name, model.config, str(device), _name(dtype), _name(decoder_dtype))
        logger.info(
            "model %s loaded from %s on %s as %s (decoder %s) in %.2fs",
            self.name,
            self.spec.directory,
            self.facts.device,
            self.facts.dtype,
            self.facts.decoder_dtype,
            time.perf_counter() - started,
        )
        return self.facts

    def _warm_up(self, model: VQModel) -> None:
        side = max(2 * model.downsample_factor, 64)
        x = torch.zeros(1, model.config.in_channels, side, side)
        (encoded,) = self._run(Op.ENCODE, [x[0]], check_params(Op.ENCODE, None))
        self._run(Op.DECODE_INDICES, [encoded.indices.long()], check_params(Op.DECODE_INDICES, None))

    def _measured_bytes_per_pixel(self, model: VQModel, side: int = 256) -> int:
        """CUDA: the peak memory a reconstruct of one `side`² image allocates beyond the weights, per pixel (the
        largest of the ops), measured rather than estimated; never below the config's estimate's half."""
        x = torch.zeros(1, model.config.in_channels, side, side)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self._run(Op.RECONSTRUCT, [x[0]], check_params(Op.RECONSTRUCT, None))
        torch.cuda.synchronize()
        measured = (torch.cuda.max_memory_allocated() - base) // (side * side)
        logger.info("model %s: %d activation bytes per pixel measured on %s", self.name, measured, model.device)
        return max(int(measured), self.bytes_per_pixel // 2)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # what a batch costs the batch policy
    def cost(self, op: Op, shape: tuple[int, ...]) -> Cost:
        """Image pixels one item of `shape` stands for, and the activation memory computing it takes."""
        pixels = output_pixels(op, shape, self._loaded().downsample_factor)
        return Cost(pixels, 0 if op == Op.QUANTIZE else pixels * self.bytes_per_pixel)

    # compute
    async def compute(self, op: Op, payloads: list[Payload], params: OpParams) -> list[Any]:
        """Run one batch on the engine thread; results align with `payloads`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_splitting, op, payloads, params)

    def run(self, op: Op, payloads: Sequence[Payload], params: OpParams | None = None) -> list[Any]:
        """`compute` for in-process callers without an event loop (blocking)."""
        checked = check_params(op, params)
        return self._executor.submit(self._run_splitting, op, list(payloads), checked).result()

    def _loaded(self) -> VQModel:
        if self.model is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self.model

    def _run_splitting(self, op: Op, payloads: list[Payload], params: OpParams) -> list[Any]:
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

    def _run(self, op: Op, payloads: list[Payload], params: OpParams) -> list[Any]:
        model = self._loaded()
        try:
            with torch.inference_mode():
                return self._ops[op](model, payloads, params)
        finally:
            if sum(self.cost(op, tuple(p.shape)).bytes for p in payloads) >= TRIM_AFTER_BYTES:
                release_free_memory()  # a large batch's activations go back to the system, not to glibc's arenas


# the ops, on the engine thread under inference mode
def _stack(model: VQModel, payloads: list[Any]) -> torch.Tensor:
    return transfers(model.device).to_device(payloads)  # B x (item shape)


def _tiles(model: VQModel, payloads: list[Tile]) -> tuple[torch.Tensor, NormStats]:
    """A batch of tiles (of one shape, maybe of several requests) and their statistics, on the device."""
    batch = transfers(model.device).to_device([tile.tensor for tile in payloads])
    return batch, NormStats.stack([tile.stats for tile in payloads]).to(model.device)


def _encode(model: VQModel, payloads: list[Any], params: Any) -> list[Any]:
    batch = _stack(model, payloads)
    latents = model.encode(batch.to(model.dtype))  # (B, D, h, w)
    _, indices = model.quantize(latents)  # (B, h, w)
    indices_cpu = host(indices.to(torch.int32))
    latents_cpu = host(latents.float())
    return [Encoded(indices_cpu[i], latents_cpu[i]) for i in range(len(batch))]


def _reconstruct(model: VQModel, payloads: list[Any], params: Any) -> list[Any]:
    batch = _stack(model, payloads)
    _, indices = model.quantize(model.encode(batch.to(model.dtype)))
    return uint8_images(model.decode_indices(indices))


def _decode_indices(model: VQModel, payloads: list[Any], params: Any) -> list[Any]:
    return uint8_images(model.decode_indices(_stack(model, payloads).long()))


def _decode_latents(model: VQModel, payloads: list[Any], params: LatentDecode) -> list[Any]:
    latents = _stack(model, payloads).float()
    if params.scaling_factor is not None:
        latents = latents / params.scaling_factor
    return uint8_images(model.decode(latents.to(model.dtype), force_not_quantize=params.force_not_quantize))


def _decode_float(model: VQModel, payloads: list[Any], params: FloatDecode) -> list[Any]:
    images = model.decode(
        _stack(model, payloads).to(model.dtype), force_not_quantize=params.force_not_quantize
    )  # (B, C, H, W)
    if params.unit_range:
        images = to_unit_range(images)
    return list(host(images).unbind(0))


def _encode_stats(model: VQModel, payloads: list[Any], params: Any) -> list[Any]:
    _, stats = record_norm_stats(model.encoder, lambda: model.encoder(_stack(model, payloads).to(model.dtype)))
    return [stats.sample(i).to(torch.device("cpu")) for i in range(len(payloads))]


def _encode_tile(model: VQModel, payloads: list[Any], params: Any) -> list[Any]:
    batch, stats = _tiles(model, payloads)
    return list(host(encode_tile(model, batch.to(model.dtype), stats).float()).unbind(0))


def _quantize(model: VQModel, payloads: list[Any], params: Any) -> list[Any]:
    latents = _stack(model, payloads).float()  # (B, D, h, w)
    _, indices = model.quantize(latents)
    indices_cpu, latents_cpu = host(indices.to(torch.int32)), host(latents)
    return [Encoded(i, z) for i, z in zip(indices_cpu, latents_cpu, strict=True)]


def _quantized(model: VQModel, batch: torch.Tensor) -> torch.Tensor:
    """Indices (B, h, w) -> codebook vectors; latents (B, D, h, w) are taken as already quantized (or not to be)."""
    if batch.is_floating_point():
        return batch.to(model.dtype)
    return model.quantize.lookup(batch.long()).to(model.dtype)


def _decode_stats(model: VQModel, payloads: list[Any], params: Any) -> list[Any]:
    quantized = _quantized(model, _stack(model, payloads))
    _, stats = record_norm_stats(model.decoder, lambda: model.decode_quantized(quantized))
    return [stats.sample(i).to(torch.device("cpu")) for i in range(len(payloads))]


def _decode_tile(model: VQModel, payloads: list[Any], params: Any) -> list[Any]:
    batch, stats = _tiles(model, payloads)
    return list(host(decode_tile(model, _quantized(model, batch), stats).float()).unbind(0))
