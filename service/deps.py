"""FastAPI dependencies and parameters as `Annotated` aliases: the services object, the API-key check, the
readiness gate, the `model` query parameter.

All `async def`: none blocks, and a plain `def` dependency costs a hop through the thread pool per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Query, Request

from .errors import ServiceError
from .runtime import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
ModelQuery = Annotated[str | None, Query(description="served model name; default: the first configured")]


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
    services.refuse_unless_serving()


InferenceGuard = [Depends(require_api_key), Depends(require_serving)]
