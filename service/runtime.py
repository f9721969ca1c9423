"""The running service's parts, held in one object on `app.state`: settings, engines, batcher, codec pool.

Routes reach it through `deps.ServicesDep` and see models only as `ModelFacts`: the engines are the batcher's.
The lifespan in `app.py` builds, starts and stops it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from . import metrics
from .batching import Batcher, BatchPolicy, draining_error
from .codecs import ImageCompression
from .cpus import ThreadPlan, available_cpus, thread_plan
from .engine import Engine, planned_device_type
from .errors import ServiceError
from .facts import ModelFacts
from .memory import default_budget_bytes
from .settings import Settings

T = TypeVar("T")


def memory_budget_bytes(settings: Settings) -> int:
    """VQSERVE_MEMORY_BUDGET_MB, or by default a share of the memory the process may use."""
    return settings.memory_budget_mb << 20 if settings.memory_budget_mb else default_budget_bytes()


Status = Literal["ready", "loading", "draining"]


@dataclass(frozen=True)
class Readiness:
    status: Status
    models: dict[str, bool]  # model name -> loaded and warmed

    @property
    def ready(self) -> bool:
        return self.status == "ready"


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # torch's and the codecs' threads: the settings, or the CPUs the process may use (its cgroup quota)
        self.threads: ThreadPlan = thread_plan(settings.torch_threads, settings.codec_threads, available_cpus())
        self.engines: dict[str, Engine] = {
            spec.name: Engine(spec, settings, torch_threads=self.threads.torch) for spec in settings.model_specs()
        }
        self.default_model = next(iter(self.engines))
        device_type = planned_device_type(settings.device)
        self.max_batch_size = settings.batch_size_on(device_type)
        self.max_batch_pixels = settings.batch_pixels_on(device_type)
        self.batcher = Batcher(
            dict(self.engines),
            BatchPolicy(
                max_batch_size=self.max_batch_size,
                max_batch_pixels=self.max_batch_pixels,
                max_batch_bytes=memory_budget_bytes(settings),
                max_wait_s=settings.max_wait_ms / 1000.0,
                max_queue=settings.max_queue,
            ),
            settings.request_timeout_s,
        )
        self.codec_pool = ThreadPoolExecutor(max_workers=self.threads.codec, thread_name_prefix="codec")
        self.compression = ImageCompression(
            png_compress_level=settings.png_compress_level,
            jpeg_quality=settings.jpeg_quality,
            webp_quality=settings.webp_quality,
        )
        self.started = False  # every model loaded and the batcher running

    def model(self, name: str | None) -> ModelFacts:
        """The facts of the model named by the `model` query parameter (the first configured one by default)."""
        if name is not None and name not in self.engines:
            raise ServiceError("model_not_found", f"no model {name!r}; served models: {sorted(self.engines)}")
        facts = self.engines[name or self.default_model].facts
        if facts is None:
            raise ServiceError("not_ready", "the models are still loading; retry shortly", retry_after_s=1)
        return facts

    def loaded_models(self) -> list[ModelFacts]:
        return [engine.facts for engine in self.engines.values() if engine.facts is not None]

    def readiness(self) -> Readiness:
        """The one readiness rule: every model loaded and warmed, the batcher running, not draining."""
        models = {name: engine.ready for name, engine in self.engines.items()}
        if self.draining:
            return Readiness("draining", models)
        return Readiness("ready" if self.started and all(models.values()) else "loading", models)

    def refuse_unless_serving(self) -> None:
        """503 for inference while loading or draining."""
        status = self.readiness().status
        if status == "draining":
            raise draining_error()
        if status == "loading":
            raise ServiceError("not_ready", "the models are still loading; retry shortly", retry_after_s=1)

    async def offload(self, kind: str, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound work (decoding, checking, encoding bodies) in the codec pool, timed under `kind`."""

        def timed() -> T:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                metrics.CODEC_DURATION.labels(kind).observe(time.perf_counter() - started)

        return await asyncio.get_running_loop().run_in_executor(self.codec_pool, timed)

    @property
    def draining(self) -> bool:
        """The batcher's flag: what refuses admission is also what readiness and keep-alive read."""
        return self.batcher.draining

    def start_draining(self) -> None:
        """Readiness 503 and new inference requests 503 from now on."""
        self.batcher.draining = True
