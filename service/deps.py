"""FastAPI dependencies as `Annotated` aliases: the services object, the API-key check, the readiness gate.

All `async def`: none blocks, and a plain `def` dependency costs a hop through the thread pool per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from .errors import ServiceError
from .runtime import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def require_api_key(request: Request, services: ServicesDep) -> None:
    """Bearer auth when VQSERVE_API_KEYS is set; every key is compared in constant time."""
    keys = services.settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    matched = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        matched |= hmac.compare_digest(given, key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise ServiceError(
            "unauthorized", "send a valid API key as 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
        )


async def require_serving(services: ServicesDep) -> None:
    """Inference only while ready and not draining."""
    if services.draining:
        raise ServiceError("shutting_down", "the server is shutting down; retry shortly", {"Retry-After": "1"})
    if not services.ready:
        raise ServiceError("not_ready", "the models are still loading; retry shortly", {"Retry-After": "1"})


InferenceGuard = [Depends(require_api_key), Depends(require_serving)]
