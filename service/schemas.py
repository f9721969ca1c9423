"""Pydantic models of every JSON body the service reads or writes; they are also the OpenAPI schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .facts import ModelFacts


class ErrorDetail(BaseModel):
    code: str = Field(description="short snake_case error kind")
    message: str = Field(description="what was wrong and what to do")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    name: str
    config: dict[str, Any] = Field(description="the diffusers config.json dict")
    codebook_size: int
    downsample_factor: int
    in_channels: int
    latent_channels: int
    vq_embed_dim: int
    device: str
    dtype: str

    @classmethod
    def of(cls, facts: ModelFacts) -> ModelInfo:
        config = facts.config
        return cls(
            name=facts.name,
            config=config.to_dict(),
            codebook_size=config.codebook_size,
            downsample_factor=config.downsample_factor,
            in_channels=config.in_channels,
            latent_channels=config.latent_channels,
            vq_embed_dim=config.embed_dim,
            device=facts.device,
            dtype=facts.dtype,
        )


class ModelList(BaseModel):
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "draining"]
    models: dict[str, bool] = Field(description="model name -> loaded and warmed")


class EncodeJSONRequest(BaseModel):
    """One image (`image`) or several (`images`), base64-encoded files."""

    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(None, description="base64 of one image file")
    images: list[str] | None = Field(None, description="base64 of several image files", min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> EncodeJSONRequest:
        if (self.image is None) == (self.images is None):
            raise ValueError("give exactly one of 'image' or 'images'")
        return self


class EncodeResult(BaseModel):
    shape: list[int] = Field(description="[h, w] of the index map")
    image_size: list[int] = Field(description="[H, W] of the input image before padding")
    codebook_size: int
    indices: list[list[int]]
    latents: str | None = Field(
        None, description="with return_latents: base64 of little-endian float32 (C, h, w), before quantization"
    )
    latents_shape: list[int] | None = None


class EncodeResponse(EncodeResult):
    model: str


class EncodeBatchResponse(BaseModel):
    model: str
    results: list[EncodeResult]


class DecodeJSONRequest(BaseModel):
    """Code indices (h x w or B x h x w) or base64 latents with their shape."""

    model_config = ConfigDict(extra="forbid")
    indices: list[list[int]] | list[list[list[int]]] | None = None
    image_size: list[int] | None = Field(None, min_length=2, max_length=2, description="[H, W] to crop to")
    latents: str | None = Field(None, description="base64 of little-endian latents (B, C, h, w)")
    shape: list[int] | None = Field(None, min_length=4, max_length=4, description="[B, C, h, w] of latents")
    dtype: Literal["float16", "bfloat16", "float32"] = "float32"

    @model_validator(mode="after")
    def _indices_or_latents(self) -> DecodeJSONRequest:
        if (self.indices is None) == (self.latents is None):
            raise ValueError("give exactly one of 'indices' or 'latents'")
        if self.latents is not None and self.shape is None:
            raise ValueError("'latents' needs 'shape': [B, C, h, w]")
        return self


class DecodeJSONResponse(BaseModel):
    images: list[str] = Field(description="base64 PNG (or the asked format) per image, in order")
