"""`create_app(settings)`: the FastAPI application and its lifespan.

Startup: load every model (on its engine thread), warm up, start the batcher, then report ready. Shutdown (after
uvicorn stopped accepting and waited for in-flight requests): readiness 503, no new admissions, drain what is
queued within VQSERVE_GRACEFUL_TIMEOUT_S, fail the rest with 503, release the engines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from . import metrics
from .error_handlers import install_handlers
from .middleware import BodyGuardMiddleware, RequestContextMiddleware
from .routes import health, inference, models, oip, remote, web
from .routes.openapi import install_schema
from .runtime import Services
from .settings import Settings

logger = logging.getLogger("vqserve")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for engine in services.engines.values():
            facts = await asyncio.to_thread(engine.load)
            config = facts.config
            metrics.MODEL_INFO.labels(
                facts.name, facts.device, facts.dtype, str(config.codebook_size), str(config.downsample_factor)
            ).set(1)
        metrics.MEMORY_BUDGET.set(services.batcher.policy.max_batch_bytes)
        services.batcher.start()
        services.started = True
        logger.info("ready", extra={"models": list(services.engines)})
        try:
            yield
        finally:
            services.start_draining()
            if not await services.batcher.drain(settings.graceful_timeout_s):
                logger.warning("graceful timeout passed with work queued; failing it with 503")
            await services.batcher.stop()
            for engine in services.engines.values():
                engine.close()
            services.codec_pool.shutdown(wait=False, cancel_futures=True)
            logger.info("stopped")

    app = FastAPI(
        title="vqserve",
        version="0.1.0",
        summary="Serve diffusers-compatible VQModel autoencoders: images <-> codebook indices.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_handlers(app)
    app.include_router(inference.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(remote.router)  # diffusers' remote VAE protocol
    app.include_router(oip.health_router)  # Open Inference Protocol / KServe v2
    app.include_router(oip.router)
    app.include_router(oip.infer_router)
    app.include_router(web.router)  # the page at /
    # outermost last: request context, then CORS (so that refusals carry its headers), then the body guard
    app.add_middleware(
        BodyGuardMiddleware, max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "x-psnr", "x-tiles", "shape", "dtype", "retry-after"],
        )
    app.add_middleware(RequestContextMiddleware)
    install_schema(app, inference.OPENAPI_MODELS)
    return app
