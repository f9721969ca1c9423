"""GET /models, /models/{name} and /models/{name}/codebook/colors: what is served and how."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..deps import ServicesDep, require_api_key
from ..schemas import CodebookColors, ModelInfo, ModelList
from .openapi import ERROR_RESPONSES

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", responses={401: ERROR_RESPONSES[401]})
async def list_models(services: ServicesDep) -> ModelList:
    """Every served model, the default first."""
    return ModelList(models=[ModelInfo.of(facts) for facts in services.loaded_models()])


@router.get("/models/{name}", responses={401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]})
async def get_model(name: str, services: ServicesDep) -> ModelInfo:
    """One served model."""
    return ModelInfo.of(services.model(name))


@router.get("/models/{name}/codebook/colors", responses={401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]})
async def codebook_colors(name: str, services: ServicesDep) -> CodebookColors:
    """An RGB colour per code (computed once at load), so that a picture of a code grid shows which codes are
    alike: the web page's code map."""
    return CodebookColors.of(services.model(name))
