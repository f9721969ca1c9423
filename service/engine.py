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
from functools import cache, partial
from typing import Any, cast

import numpy as np
import torch

from model import ConfigError, VQModel
from model.checkpoint import CheckpointError, has_checkpoint
from model.config import VQModelConfig
from model.device import DeviceError, cpu_has_native_bf16, resolve_device
from model.pixels import to_uint8, to_unit_range
from model.prior import PixelCNNPrior, PriorConfig, load_prior_for, nll_bits, sample_cell
from model.tiling import NormStats, activation_bytes_per_pixel, decode_tile, encode_tile, record_norm_stats

from . import metrics
from .batching import Cost
from .cancellation import stop_when
from .errors import ModelLoadError
from .facts import ModelFacts
from .memory import release_free_memory
from .model_source import ModelSourceError, resolve
from .ops import (
    PREEMPTIBLE_OPS,
    Encoded,
    FloatDecode,
    LatentDecode,
    Op,
    OpParams,
    Payload,
    PriorNLL,
    PriorStep,
    Tile,
    check_params,
    output_pixels,
)
from .preemption import Baton
from .settings import ModelSpec, Settings, default_model_path, setting_names
from .transfer import Transfers

logger = logging.getLogger("vqserve.engine")

WARMUP_MAX_SIDE = 512  # warm-up's side when tiling is off (VQSERVE_TILE_SIZE=0), whatever the sample size
PRIOR_OPS = frozenset({Op.PRIOR_STEP, Op.PRIOR_NLL})
# the ops whose batch is one stack of the payloads (`_stack`): their inputs can be copied ahead (`Engine.prefetch`)
PREFETCHABLE_OPS = frozenset(
    {Op.ENCODE, Op.RECONSTRUCT, Op.DECODE_INDICES, Op.DECODE_LATENTS, Op.DECODE_FLOAT, Op.QUANTIZE}
)
# batches whose activations may exceed this hand freed memory back at once; smaller ones leave it for the next batch
# (service/memory.py), and all of it goes back once the service is idle
TRIM_AFTER_BYTES = 1 << 30
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_checkpoint(spec: ModelSpec) -> None:
    """Refuse a model path without a checkpoint with a message naming the path and the settings to change.

    `python -m service` calls it before starting (exit 2, no traceback); loading calls it for app users."""
    try:
        found = has_checkpoint(spec.directory)
    except ConfigError as exc:  # e.g. two .ckpt files: which one is meant
        raise ModelLoadError(f"model {spec.name!r}: {exc}") from exc
    if not found:
        shipped = spec.path.resolve() == default_model_path().resolve()
        raise ModelLoadError(
            f"model {spec.name!r}: no checkpoint at {spec.directory} (config.json missing). Point VQSERVE_MODEL_PATH "
            f"/ --model-path (or VQSERVE_MODELS=name=path) at a diffusers-format VQModel directory, or at one "
            f"holding a taming-transformers .ckpt and its .yaml"
            + (", or train the default one with `make train`" if shipped else "")
        )


def serving_device(requested: str) -> torch.device:
    """`resolve_device`, refusing as a load error that names the setting."""
    try:
        return resolve_device(requested)
    except DeviceError as exc:
        raise ModelLoadError(f"{exc}: set {setting_names('device')} to auto or cpu") from exc


def planned_device_type(requested: str) -> str:
    """The device type the models will run on ("cpu", "cuda", "mps"), for defaults chosen before they load; a
    device that cannot be used is refused later, by the load, with its message."""
    try:
        return resolve_device(requested).type
    except DeviceError:
        return torch.device("cuda" if requested.startswith("cuda") else requested).type


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

    def __init__(self, spec: ModelSpec, settings: Settings, torch_threads: int = 0) -> None:
        # where the checkpoint is: a Hub repo id is fetched (or found in the cache) here, before anything loads, so
        # that a bad id fails `create_app` (and `python -m service` exits 2 with one line) rather than the lifespan
        try:
            self.spec, self.source = resolve(spec)
        except ModelSourceError as exc:
            raise ModelLoadError(str(exc)) from None
        self.name = spec.name
        self._settings = settings
        self._torch_threads = torch_threads or settings.torch_threads  # 0: leave torch's own default
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{spec.name}")
        # the thread of urgent batches, let in while a preemptible one pauses; the baton keeps them from computing
        # at the same time (service/preemption.py)
        self._urgent_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{spec.name}-urgent")
        self._baton = Baton()
        self._prefetch_executor: ThreadPoolExecutor | None = None  # set at load when VQSERVE_PREFETCH applies
        self.model: VQModel | None = None
        self.prior: PixelCNNPrior | None = None  # the learned prior over the codes, when the checkpoint has one
        self.facts: ModelFacts | None = None  # set once loaded
        self.bytes_per_pixel = 0  # activation memory per image pixel on the device (set at load)
        self.prior_bytes_per_cell = 0  # the prior's activation memory per code cell (set at load)
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
            Op.PRIOR_STEP: lambda model, payloads, params: self._prior_step(payloads),
            Op.PRIOR_NLL: lambda model, payloads, params: _prior_nll(self._loaded_prior(), payloads, params),
        }

    @property
    def ready(self) -> bool:
        return self.facts is not None

    @property
    def prefetches(self) -> bool:
        """Whether the batcher should hand this engine the next batch early (`prefetch`): VQSERVE_PREFETCH."""
        return self._prefetch_executor is not None

    def prefetch(self, op: Op, payloads: list[Payload]) -> None:
        """The batch that computes next: start copying its inputs to the device now, on a thread of its own, while
        the current batch computes (`service/transfer.py`). Only a stack of the payloads is copied ahead; other
        ops copy as they compute."""
        if self._prefetch_executor is None or op not in PREFETCHABLE_OPS:
            return
        tensors = cast(list[torch.Tensor], payloads)  # the payloads of PREFETCHABLE_OPS are tensors (`_stack`)
        used = metrics.PREFETCHED_BATCHES.labels(self.name, op).inc
        transfers(self._loaded().device).prefetch(tensors, self._prefetch_executor, used)

    # lifecycle
    def load(self) -> ModelFacts:
        """Load, move and warm up (blocking: call from a thread)."""
        return self._executor.submit(self._load).result()

    def _load(self) -> ModelFacts:
        check_checkpoint(self.spec)
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        device = serving_device(self._settings.device)
        started = time.perf_counter()
        try:
            model = VQModel.from_pretrained(self.spec.path, subfolder=self.spec.subfolder, device="cpu")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot load {self.spec.directory}: {exc}") from exc
        # from the checkpoint's weights on the CPU, before any cast: the same colours on every device and dtype
        colors = tuple((r, g, b) for r, g, b in model.quantize.principal_colors().tolist())
        dtype = resolve_dtype(self._settings.dtype, device, model.config.force_upcast)
        decoder_dtype = resolve_decoder_dtype(self._settings.decoder_dtype, dtype, device)
        # fused upsampling weights are built in the load dtype, then the decoder is cast
        self.model = model.to(device=device, dtype=dtype).optimize_for_inference().set_decoder_dtype(decoder_dtype)
        prefetch = self._settings.prefetch
        if prefetch == "on" or (prefetch == "auto" and device.type == "cuda"):
            self._prefetch_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{self.name}-copy")
        itemsize = max(dtype.itemsize, decoder_dtype.itemsize)
        self.bytes_per_pixel = activation_bytes_per_pixel(model.config, itemsize)
        prior_config = self._load_prior(model.config, device)
        if self._settings.warmup:
            self._warm_up(self.model)
            if device.type == "cuda":
                self.bytes_per_pixel = self._measured_bytes_per_pixel(self.model)
        self.facts = ModelFacts(
            name=self.name,
            config=model.config,
            device=str(device),
            dtype=_name(dtype),
            decoder_dtype=_name(decoder_dtype),
            source=self.source,
            codebook_colors=colors,
            prior=prior_config,
        )
        logger.info(
            "model %s loaded from %s on %s as %s (decoder %s) in %.2fs%s",
            self.name,
            self.source.describe(),
            self.facts.device,
            self.facts.dtype,
            self.facts.decoder_dtype,
            time.perf_counter() - started,
            "" if prior_config is None else f", with a prior over {list(prior_config.grid_size)} code grids",
        )
        return self.facts

    def warmup_side(self, model: VQModel) -> int:
        """The side warm-up runs at: the model's `sample_size` (what it will mostly be asked for), at most one tile
        (VQSERVE_TILE_SIZE, or WARMUP_MAX_SIDE untiled) so that startup stays bounded, a multiple of the downsample
        factor and at least two latent cells."""
        factor = model.downsample_factor
        cap = self._settings.tile_size or WARMUP_MAX_SIDE
        side = min(model.config.sample_size, cap) // factor * factor
        return max(side, 2 * factor)

    def _load_prior(self, config: VQModelConfig, device: torch.device) -> PriorConfig | None:
        """The checkpoint's `prior/`, on the device in float32 (sampling draws from its softmax: half precision
        would shift the probabilities of rare codes), or None when there is none."""
        try:
            prior = load_prior_for(self.spec.directory, config)
        except (CheckpointError, OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"model {self.name!r}: cannot load its prior from {self.spec.directory}: {exc}"
            ) from exc
        if prior is None:
            return None
        self.prior = prior.to(device=device, dtype=torch.float32).eval()
        self.prior_bytes_per_cell = prior_activation_bytes_per_cell(prior.config)
        return prior.config

    def _warm_up(self, model: VQModel) -> None:
        """One item of each op a request starts with, at `warmup_side`: the first request of that size then pays no
        one-time cost (allocator growth, oneDNN kernel selection: 1.38 s against 0.63 s for a 256x256 reconstruct)."""
        side = self.warmup_side(model)
        started = time.perf_counter()
        x = torch.zeros(model.config.in_channels, side, side)
        (encoded,) = self._run(Op.ENCODE, [x], check_params(Op.ENCODE, None))
        self._run(Op.DECODE_INDICES, [encoded.indices.long()], check_params(Op.DECODE_INDICES, None))
        self._run(Op.DECODE_LATENTS, [encoded.latents], check_params(Op.DECODE_LATENTS, None))
        self._run(Op.RECONSTRUCT, [x], check_params(Op.RECONSTRUCT, None))
        if self.prior is not None:
            grid = torch.zeros(self.prior.config.grid_size, dtype=torch.int64)
            step = PriorStep(grid, (0, 0), None, 1.0, None, torch.Generator().manual_seed(0))
            self._run(Op.PRIOR_STEP, [step], check_params(Op.PRIOR_STEP, None))
            self._run(Op.PRIOR_NLL, [grid], PriorNLL())
        elapsed = time.perf_counter() - started
        logger.info(
            "model %s warmed up at %dx%d (encode, decode, reconstruct) in %.2fs",
            self.name,
            side,
            side,
            elapsed,
            extra={"model": self.name, "warmup_side": side, "warmup_s": round(elapsed, 3)},
        )

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
        self._urgent_executor.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._prefetch_executor is not None:
            self._prefetch_executor.shutdown(wait=True, cancel_futures=True)

    # what a batch costs the batch policy
    def cost(self, op: Op, shape: tuple[int, ...]) -> Cost:
        """Image pixels one item of `shape` stands for, and the activation memory computing it takes."""
        pixels = output_pixels(op, shape, self._loaded().downsample_factor)
        if op in PRIOR_OPS:
            return Cost(pixels, shape[-2] * shape[-1] * self.prior_bytes_per_cell)
        return Cost(pixels, 0 if op == Op.QUANTIZE else pixels * self.bytes_per_pixel)

    # compute
    async def compute(
        self,
        op: Op,
        payloads: list[Payload],
        params: OpParams,
        abandoned: Callable[[], bool] | None = None,
        *,
        urgent: bool = False,
    ) -> list[Any]:
        """Run one batch on the engine thread; results align with `payloads`. Once `abandoned()` is true the batch
        stops at the next module boundary with `BatchAbandoned` (`service/cancellation.py`). `urgent`: a batch
        the batcher hands over while a preemptible one (`PREEMPTIBLE_OPS`) computes; it runs on the second thread
        as soon as that one pauses at a module boundary (`service/preemption.py`)."""
        loop = asyncio.get_running_loop()
        executor = self._urgent_executor if urgent else self._executor
        return await loop.run_in_executor(executor, self._run_held, op, payloads, params, abandoned, urgent)

    def _run_held(
        self, op: Op, payloads: list[Payload], params: OpParams, abandoned: Callable[[], bool] | None, urgent: bool
    ) -> list[Any]:
        pause = partial(self._pause, op) if op in PREEMPTIBLE_OPS else None
        with self._baton.hold(urgent=urgent), stop_when(abandoned, pause):
            return self._run_splitting(op, payloads, params)

    def _pause(self, op: Op) -> None:
        if self._baton.let_urgent_in():
            metrics.BATCH_PAUSES.labels(self.name, op).inc()

    def run(self, op: Op, payloads: Sequence[Payload], params: OpParams | None = None) -> list[Any]:
        """`compute` for in-process callers without an event loop (blocking)."""
        checked = check_params(op, params)
        return self._executor.submit(self._run_held, op, list(payloads), checked, None, False).result()

    def _loaded(self) -> VQModel:
        if self.model is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self.model

    def _loaded_prior(self) -> PixelCNNPrior:
        if self.prior is None:
            raise RuntimeError(f"model {self.name} has no prior")
        return self.prior

    def _prior_step(self, payloads: list[PriorStep]) -> list[int]:
        codes = _prior_step(self._loaded_prior(), payloads)
        metrics.SAMPLED_CODES.labels(self.name).inc(len(codes))
        return codes

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


def prior_activation_bytes_per_cell(config: PriorConfig) -> int:
    """float32 bytes one code cell takes in a prior forward, as an upper bound: the logits and their softmax (K
    each), and a vertical and a horizontal stack of hidden features per layer (with their gates: twice the
    width), as if all were alive at once."""
    hidden = 2 * 2 * config.hidden_channels * config.num_layers
    return 4 * (2 * config.num_vq_embeddings + hidden)


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


# the prior's ops (service/sampling.py drives PRIOR_STEP one raster cell at a time)
def _labels(prior: PixelCNNPrior, labels: list[int | None], device: torch.device) -> torch.Tensor | None:
    """(B,) class indices, `num_labels` standing for "no label" (the prior was trained with label dropout);
    None for an unconditional prior."""
    none = prior.config.num_labels
    if none == 0:
        return None
    return torch.tensor([none if label is None else label for label in labels], dtype=torch.long, device=device)


def _prior_step(prior: PixelCNNPrior, payloads: list[PriorStep]) -> list[int]:
    """One raster step of each sample in the batch: the prior's logits for every grid, then each sample's code at
    its own cell drawn with its own generator (on the CPU, where generators are cheap and reproducible). The
    prior is causal, so rows below the lowest cell asked for cannot matter and are left out."""
    device = prior.device
    last_row = max(p.cell[0] for p in payloads)
    grids = torch.stack([p.indices[: last_row + 1] for p in payloads]).to(device)  # (B, last_row + 1, W)
    logits = prior(grids, _labels(prior, [p.label for p in payloads], device))  # (B, K, last_row + 1, W)
    batch = torch.arange(len(payloads), device=device)
    rows = torch.tensor([p.cell[0] for p in payloads], device=device)
    cols = torch.tensor([p.cell[1] for p in payloads], device=device)
    picked = logits[batch, :, rows, cols].float().cpu()  # (B, K): each sample's logits at its cell
    return [sample_cell(picked[b], p.temperature, p.top_k, p.generator) for b, p in enumerate(payloads)]


def _prior_nll(prior: PixelCNNPrior, payloads: list[Any], params: PriorNLL) -> list[float]:
    device = prior.device
    grids = torch.stack(payloads).to(device).long()  # (B, h, w)
    bits = nll_bits(prior, grids, _labels(prior, [params.label] * len(payloads), device))  # (B,)
    return [float(b) for b in bits.float().cpu()]
