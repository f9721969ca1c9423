"""GET /models and /models/{name}: what is served and how."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..deps import ServicesDep, require_api_key
from ..engine import Engine
from ..errors import ERROR_RESPONSES
from ..schemas import ModelInfo, ModelList

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


def model_info(engine: Engine) -> ModelInfo:
    return ModelInfo(
        name=engine.name,
        config=engine.config,
        codebook_size=engine.codebook_size,
        downsample_factor=engine.downsample_factor,
        in_channels=engine.in_channels,
        latent_channels=engine.latent_channels,
        vq_embed_dim=engine.embed_dim,
        device=engine.device,
        dtype=engine.dtype,
    )


@router.get("/models", responses={401: ERROR_RESPONSES[401]})
async def list_models(services: ServicesDep) -> ModelList:
    """Every served model, the default first."""
    return ModelList(models=[model_info(e) for e in services.engines.values() if e.ready])


@router.get("/models/{name}", responses={401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]})
async def get_model(name: str, services: ServicesDep) -> ModelInfo:
    """One served model."""
    return model_info(services.engine(name))
