"""The running service's parts, held in one object on `app.state`: settings, engines, batcher, codec pool.

Routes reach it through `deps.ServicesDep`; the lifespan in `app.py` builds, starts and stops it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import metrics
from .batching import Batcher, BatchPolicy
from .codecs import EncodeOptions
from .engine import Engine
from .errors import ServiceError
from .payloads import ModelFacts
from .settings import Settings

T = TypeVar("T")


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engines: dict[str, Engine] = {spec.name: Engine(spec, settings) for spec in settings.model_specs()}
        self.default_model = next(iter(self.engines))
        self.batcher = Batcher(
            dict(self.engines),
            BatchPolicy(
                max_batch_size=settings.max_batch_size,
                max_batch_pixels=settings.max_batch_pixels,
                max_wait_s=settings.max_wait_ms / 1000.0,
                max_queue=settings.max_queue,
            ),
            settings.request_timeout_s,
        )
        self.codec_pool = ThreadPoolExecutor(max_workers=settings.codec_threads, thread_name_prefix="codec")
        self.encode_options = EncodeOptions(
            png_compress_level=settings.png_compress_level,
            jpeg_quality=settings.jpeg_quality,
            webp_quality=settings.webp_quality,
        )
        self.ready = False
        self._facts: dict[str, ModelFacts] = {}

    def engine(self, name: str | None) -> Engine:
        """The engine named by the `model` query parameter (the first configured one by default)."""
        if name is None:
            return self.engines[self.default_model]
        if name not in self.engines:
            raise ServiceError("model_not_found", f"no model {name!r}; served models: {sorted(self.engines)}")
        return self.engines[name]

    def facts(self, engine: Engine) -> ModelFacts:
        """What the input checks need to know about a model, read once it is loaded (it never changes)."""
        facts = self._facts.get(engine.name)
        if facts is None:
            facts = self._facts[engine.name] = ModelFacts.of(engine)
        return facts

    async def codec(self, kind: str, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound (de)serialisation in the codec pool, timed under `kind`."""

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
