"""`create_app(settings)`: the FastAPI application and its lifespan.

Startup: load every model not yet loaded (`python -m service` loads them before serving), warm up, start the batcher,
then report started. Shutdown (after uvicorn stopped accepting and waited for in-flight requests): readiness 503, no
new admissions, drain what is queued within VQSERVE_GRACEFUL_TIMEOUT_S, fail the rest with 503, release the engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from . import metrics
from .error_handlers import install_handlers
from .memory import can_release_free_memory, keep_freed_memory_for_reuse, release_free_memory
from .middleware import BodyGuardMiddleware, HeadMiddleware, RequestContextMiddleware
from .ops import Op
from .routes import generation, health, inference, models, oip, remote, web
from .routes.openapi import install_schema
from .runtime import Services
from .settings import Settings

logger = logging.getLogger("vqserve")

DOCS_ASSETS_URL = "/docs-assets"  # Swagger UI's and ReDoc's scripts and styles, from the fastapi-offline package
IDLE_BEFORE_TRIM_S = 0.5  # no inference request ended and nothing queued or computing for this long: trim


async def release_memory_when_idle(services: Services, work_ended: asyncio.Event, trim: Callable[[], object]) -> None:
    """Hand the memory freed by inference back to the OS once the service is idle.

    glibc keeps what a thread frees in that thread's arena for reuse; the engine's batches, the codec threads and
    the event loop each leave theirs at their high-water mark, so after disconnect churn (512x512 reconstructs on
    the default model, 7 rounds of 8 s) RSS stayed at 2.3 GiB although no tensor beyond the weights was alive.
    `malloc_trim(0)` gives those pages back (to 0.4 GiB). It runs, in a thread, only once no inference request has
    ended for IDLE_BEFORE_TRIM_S and the batcher is idle, so a busy service pays nothing for it (a fixed mmap
    threshold would have: every large tensor page-faulted anew, 2.6 -> 3.9 s per 256x256 reconstruct).
    """
    while True:
        await work_ended.wait()
        while True:
            work_ended.clear()
            await asyncio.sleep(IDLE_BEFORE_TRIM_S)
            if not work_ended.is_set() and services.batcher.idle():
                break
        started = time.perf_counter()
        await asyncio.to_thread(trim)
        logger.debug("memory trimmed after work", extra={"trim_ms": round((time.perf_counter() - started) * 1000, 2)})


def report_threads(services: Services) -> None:
    """The thread plan in the startup log and in `vqserve_cpu_threads`: the first thing to check on a slow pod."""
    plan = services.threads
    metrics.CPU_THREADS.labels("torch").set(plan.torch)
    metrics.CPU_THREADS.labels("codec").set(plan.codec)
    logger.info(
        "%d CPUs available (bounded by %s): %d torch threads, %d codec threads, batches of up to %d images and %d "
        "pixels",
        plan.cpus.count,
        plan.cpus.source,
        plan.torch,
        plan.codec,
        services.max_batch_size,
        services.max_batch_pixels,
        extra={"cpus": plan.cpus.count, "torch_threads": plan.torch, "codec_threads": plan.codec},
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services(settings)
    work_ended = asyncio.Event()  # set as each inference request ends
    trim = release_free_memory if can_release_free_memory() else None
    keep_freed_memory_for_reuse()  # process-wide, before any model loads: batches reuse what the last one freed

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        report_threads(services)
        for engine in services.engines.values():
            loaded = engine.facts  # `python -m service` loads every model before serving
            facts = loaded if loaded is not None else await asyncio.to_thread(engine.load)
            config = facts.config
            metrics.MODEL_INFO.labels(
                facts.name, facts.device, facts.dtype, str(config.codebook_size), str(config.downsample_factor)
            ).set(1)
            metrics.create_series(facts.name, list(Op))
        metrics.MEMORY_BUDGET.set(services.batcher.policy.max_batch_bytes)
        services.batcher.start()
        trimmer = asyncio.create_task(release_memory_when_idle(services, work_ended, trim)) if trim else None
        services.started = True
        logger.info(
            "started", extra={"models": list(services.engines)}
        )  # `python -m service` logs "ready" once listening
        try:
            yield
        finally:
            services.start_draining()
            if trimmer is not None:
                trimmer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await trimmer
            if not await services.batcher.drain(settings.graceful_timeout_s):
                logger.warning("graceful timeout passed with work queued; failing it with 503")
            await services.batcher.stop()
            for engine in services.engines.values():
                engine.close()
            services.codec_pool.shutdown(wait=False, cancel_futures=True)
            logger.info("stopped")

    # /docs and /redoc with Swagger UI and ReDoc served from the package (fastapi-offline), not from a CDN: they
    # work offline and behind egress-less firewalls, and the web page's "API docs" link with them
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_URL,
        title="vqserve",
        version="0.1.0",
        summary="Serve diffusers-compatible VQModel autoencoders: images <-> codebook indices.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_handlers(app)
    app.include_router(inference.router)
    app.include_router(generation.router)  # sampling from a model's prior
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(remote.router)  # diffusers' remote VAE protocol
    app.include_router(oip.health_router)  # Open Inference Protocol / KServe v2
    app.include_router(oip.router)
    app.include_router(oip.infer_router)
    app.include_router(web.router)  # the page at /
    # outermost last: request context, then CORS (so that refusals carry its headers), the body guard, then HEAD
    app.add_middleware(HeadMiddleware)
    app.add_middleware(
        BodyGuardMiddleware, max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=[
                "x-request-id",
                "x-psnr",
                "x-tiles",
                "x-seed",
                "x-nll-bits",
                "shape",
                "dtype",
                "image_size",
                "retry-after",
            ],
        )
    app.add_middleware(RequestContextMiddleware, on_inference_end=work_ended.set)
    install_schema(app, (*inference.OPENAPI_MODELS, *generation.OPENAPI_MODELS))
    return app
