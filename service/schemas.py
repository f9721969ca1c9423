"""Pydantic models of every JSON body the service reads or writes; they are also the OpenAPI schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

from .facts import HubSource, LocalSource, ModelFacts


class ErrorDetail(BaseModel):
    code: str = Field(description="short snake_case error kind")
    message: str = Field(description="what was wrong and what to do")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PriorInfo(BaseModel):
    """The learned prior over a model's codes (its checkpoint's `prior/`)."""

    num_labels: int = Field(description="classes of a conditional prior, `label` 0 .. num_labels-1; 0: unconditional")
    grid: list[int] = Field(description="[h, w] of the code grids it was trained on: what /generate draws")
    codebook_size: int
    config: dict[str, Any] = Field(description="the prior's config.json dict")


class ModelInfo(BaseModel):
    name: str
    config: dict[str, Any] = Field(description="the diffusers config.json dict")
    codebook_size: int
    downsample_factor: int
    in_channels: int
    latent_channels: int
    vq_embed_dim: int
    device: str
    dtype: str = Field(description="the encoder's and quantizer's dtype (code indices)")
    decoder_dtype: str = Field(description="the decoder's dtype (VQSERVE_DECODER_DTYPE; pixels)")
    source: LocalSource | HubSource = Field(
        description="where the checkpoint came from: a local directory (`path`, `subfolder`), or a Hugging Face "
        "Hub repo (`repo`, `revision`: the commit served, `ref`: the revision asked for, `subfolder`)"
    )
    prior: PriorInfo | None = Field(description="the prior /generate, /complete and return_nll use; null: none")

    @classmethod
    def of(cls, facts: ModelFacts) -> ModelInfo:
        config = facts.config
        prior = facts.prior
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
            decoder_dtype=facts.decoder_dtype,
            source=facts.source,
            prior=None
            if prior is None
            else PriorInfo(
                num_labels=prior.num_labels,
                grid=list(prior.grid_size),
                codebook_size=prior.num_vq_embeddings,
                config=prior.to_dict(),
            ),
        )


class ModelList(BaseModel):
    models: list[ModelInfo]


class CodebookColors(BaseModel):
    """A colour per code for pictures of code grids: similar code vectors get similar colours."""

    model: str
    codebook_size: int
    colors: list[tuple[int, int, int]] = Field(
        description="[r, g, b] in 0..255 per code, in index order: the code vector's first three principal "
        "components over the codebook, each scaled between its 0.5th and 99.5th percentiles"
    )

    @classmethod
    def of(cls, facts: ModelFacts) -> CodebookColors:
        return cls(model=facts.name, codebook_size=facts.config.codebook_size, colors=list(facts.codebook_colors))


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


class ReconstructJSONResponse(BaseModel):
    """/reconstruct with `Accept: application/json`: the PNG and its quality in one body."""

    model: str
    image: str = Field(description="base64 PNG of the reconstruction at the input's size")
    psnr: float = Field(description="dB, reconstruction against the input (as the x-psnr header)")
    shape: list[int] = Field(description="[H, W, C] of the reconstruction")
    image_size: list[int] = Field(description="[H, W] of the input image")


# sampling from a model's prior: /generate and /complete (service/sampling.py)
MAX_SEED = 2**32 - 1
MAX_FIRST_SAMPLE = 1_000_000  # below model.prior.SEED_STRIDE: the samples of two seeds never coincide


class GenerateRequest(BaseModel):
    """What to draw; every field optional. Sample b is drawn with its own generator seeded from (seed,
    first_sample + b), so the same seed gives the same samples however requests are split or batched."""

    model_config = ConfigDict(extra="forbid")
    count: StrictInt = Field(1, ge=1, description="samples to draw (at most VQSERVE_MAX_IMAGES_PER_REQUEST, else 413)")
    label: StrictInt | None = Field(
        None, ge=-1, description="class of a conditional prior, 0 .. num_labels-1; omitted, null or -1: unconditional"
    )
    temperature: StrictFloat = Field(
        1.0,
        ge=1e-3,
        le=100,
        allow_inf_nan=False,
        description="logits are divided by it: < 1 sharper, > 1 more varied; 0.001 .. 100 (below 0.001 the draw is "
        "the most likely code already, and dividing by less may overflow)",
    )
    top_k: StrictInt | None = Field(
        None, ge=1, description="draw among the k most likely codes (at most the codebook size); null: all"
    )
    seed: StrictInt | None = Field(
        None, ge=0, le=MAX_SEED, description="omitted: a random one, reported in the reply (`seed`, header x-seed)"
    )
    first_sample: StrictInt = Field(
        0, ge=0, le=MAX_FIRST_SAMPLE, description="index of the first sample in the seed's sequence"
    )


class CompleteRequest(GenerateRequest):
    """A code grid and the cells to redraw: where `mask` is 1, in raster order, each conditioned on every cell
    before it (kept or already redrawn); the other cells are kept exactly."""

    indices: list[list[StrictInt]] = Field(min_length=1, description="h rows of w codes in [0, codebook_size)")
    mask: list[list[Annotated[StrictInt, Field(ge=0, le=1)]]] = Field(
        min_length=1, description="h rows of w 0/1: 1 = redraw this cell"
    )


class SampleResult(BaseModel):
    indices: list[list[int]] = Field(description="the drawn code grid, h rows of w codes")
    image: str = Field(description="base64 PNG of the grid decoded")


class GenerateResponse(BaseModel):
    model: str
    shape: list[int] = Field(description="[h, w] of each code grid")
    seed: int = Field(description="the seed the samples were drawn with (the given one, or the random one chosen)")
    samples: list[SampleResult]


# the Open Inference Protocol (KServe v2): the inference request as the protocol defines it, validated whole
# before any field is read (`protocols/oip.py`), and the replies of the /v2 routes
def _scalar(value: object) -> bool | int | float | str:
    if not isinstance(value, bool | int | float | str):
        raise ValueError(f"must be a string, number or boolean, got {type(value).__name__}")
    return value


def _number(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    return value


OIPScalar = Annotated[
    bool | int | float | str,
    PlainValidator(_scalar),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}),
]
OIPNumber = Annotated[float | int, PlainValidator(_number), WithJsonSchema({"type": "number"})]


class OIPParameters(BaseModel):
    """`$parameters`: an object whose values are strings, numbers or booleans; the keys vqserve reads are typed."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, OIPScalar] = Field(init=False)


class InferRequestParameters(OIPParameters):
    binary_data_output: StrictBool = Field(default=False, description="binary-data extension: every output as binary")
    force_not_quantize: StrictBool = Field(
        default=False, description="LATENTS: decode without snapping to the codebook"
    )
    scaling_factor: OIPNumber | None = Field(
        default=None, description="LATENTS: divided by it first; finite, not 0, not subnormal in float32"
    )


class InferInputParameters(OIPParameters):
    binary_data_size: StrictInt | None = Field(
        default=None, ge=0, description="binary-data extension: the tensor's bytes after the JSON header"
    )


class InferOutputParameters(OIPParameters):
    binary_data: StrictBool | None = Field(default=None, description="binary-data extension: this output as binary")


class InferInputTensor(BaseModel):
    """`$request_input`: one named tensor; `data` row-major (flat or nested), or binary after the JSON header."""

    name: StrictStr = Field(description="IMAGE, INDICES or LATENTS")
    shape: list[Annotated[StrictInt, Field(ge=1)]] = Field(min_length=1, description="positive sizes")
    datatype: StrictStr = Field(description="UINT8 (IMAGE), INT16/INT32/INT64 (INDICES), FP16/FP32 (LATENTS)")
    parameters: InferInputParameters | None = None
    data: list[Any] | None = Field(default=None, description="row-major values; absent with binary_data_size")


class InferRequestedOutput(BaseModel):
    """`$request_output`: an output wanted, and whether as binary."""

    name: StrictStr = Field(description="INDICES or LATENTS from IMAGE; IMAGE from INDICES or LATENTS")
    parameters: InferOutputParameters | None = None


class InferenceRequest(BaseModel):
    """`$inference_request` of the v2 protocol; keys it does not define are ignored (room for extensions)."""

    id: StrictStr | None = None
    parameters: InferRequestParameters | None = None
    inputs: list[InferInputTensor] = Field(description="exactly one of IMAGE, INDICES or LATENTS")
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, OIPScalar] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """`$inference_response` (JSON; with binary outputs this JSON header is followed by their bytes)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, OIPScalar] | None = None
    outputs: list[InferOutputTensor]


class OIPErrorResponse(BaseModel):
    """The protocol's error shape."""

    error: str = Field(description="what was wrong and what to do")
