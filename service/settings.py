"""Service configuration: the only place settings are read.

Every field is an environment variable with the `VQSERVE_` prefix (`max_queue` -> `VQSERVE_MAX_QUEUE`) and a flag
of `python -m service` (`--max-queue`). Invalid values fail at startup with a message naming the setting; nothing
else in the service reads the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

DType = Literal["auto", "float32", "float16", "bfloat16"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def default_model_path() -> Path:
    """The shipped checkpoint, resolved inside the installed `model` package."""
    import model

    return Path(model.__file__).parent / "weights" / "default"


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: its public name and where its checkpoint lives."""

    name: str
    path: Path
    subfolder: str | None

    @property
    def directory(self) -> Path:
        """Where `config.json` and the weights are: the path, or its subfolder."""
        return self.path / self.subfolder if self.subfolder else self.path


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service, with the defaults `python -m service` runs with."""

    model_config = SettingsConfigDict(env_prefix="VQSERVE_", extra="ignore", frozen=True)

    # network
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    # models: `model_path` (+ `model_subfolder`) serves one model; `models` ("name=path,...") serves several
    model_path: Path | None = None
    model_subfolder: str | None = None
    model_name: str = "default"  # the public name of the single `model_path` model
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: str = "auto"  # auto|cpu|cuda|cuda:N|mps
    dtype: DType = "auto"  # auto: float16/bfloat16 on GPU unless the config forces upcast, float32 on CPU
    # the decoder's alone (post_quant_conv + decoder): encoder and quantizer keep `dtype`, so codes do not change;
    # auto: `dtype`. bfloat16 is refused on a CPU without native bf16 (avx512_bf16/amx_bf16), where it is slower
    decoder_dtype: DType = "auto"
    warmup: bool = True
    torch_threads: int = Field(default=0, ge=0)  # 0: torch's default
    # batching
    max_batch_size: int = Field(default=16, ge=1)
    max_batch_pixels: int = Field(default=16 * 1024 * 1024, ge=1)  # image pixels per batch (input for encode)
    max_wait_ms: float = Field(default=5.0, ge=0)
    max_queue: int = Field(default=256, ge=1)  # requests admitted but not yet computed; beyond -> 429
    request_timeout_s: float = Field(default=60.0, gt=0)  # deadline from arrival; -> 504
    # tiling and memory: inputs larger than tile_size pixels a side run in tiles (0: never); batches fit the budget
    tile_size: int = Field(default=512, ge=0)
    tile_overlap: int = Field(default=64, ge=0)
    memory_budget_mb: int = Field(default=0, ge=0)  # 0: 1/16 of the memory the process may use (cgroup, else host)
    # limits
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_pixels: int = Field(default=4096 * 4096, ge=1)  # per image
    max_images_per_request: int = Field(default=32, ge=1)
    body_timeout_s: float = Field(default=30.0, gt=0)  # the whole body must arrive within this; -> 408
    # connections, bounded by the HTTP protocol before a request reaches the app (middleware.BoundedHttpToolsProtocol)
    max_connections: int = Field(default=1000, ge=1)  # open connections; one more is answered 503 and closed
    header_timeout_s: float = Field(default=10.0, gt=0)  # request line and headers must arrive within this; -> 408
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)  # request line and headers together; -> 431
    max_headers: int = Field(default=100, ge=1)  # header fields per request; -> 431
    # codecs
    codec_threads: int = Field(default=4, ge=1)
    png_compress_level: int = Field(default=1, ge=0, le=9)
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    webp_quality: int = Field(default=95, ge=1, le=100)
    # lifecycle and access
    graceful_timeout_s: float = Field(default=30.0, ge=0)  # drain bound on SIGTERM
    shutdown_delay_s: float = Field(default=0.0, ge=0)  # readiness 503 this long before the listener closes
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # models whose /remote/decode skips quantization (diffusers pipelines pass force_not_quantize=True for them);
    # unset: the MoVQ-style ones (norm_type "spatial", Kandinsky's decoder)
    remote_force_not_quantize: Annotated[list[str] | None, NoDecode] = None
    log_level: LogLevel = "info"

    @field_validator("models", "api_keys", "cors_origins", "remote_force_not_quantize", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"model name {value!r} must be letters, digits, '.', '_' or '-'")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        names = []
        for entry in value:
            name, sep, path = entry.partition("=")
            if not sep or not path.strip() or not _NAME_RE.match(name.strip()):
                raise ValueError(f"each models entry must be name=path with a plain name, got {entry!r}")
            names.append(name.strip())
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return value

    @model_validator(mode="after")
    def _overlap_within_tile(self) -> Settings:
        if self.tile_size and self.tile_overlap >= self.tile_size:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be smaller than tile_size ({self.tile_size})")
        return self

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> Settings:
        if self.models and self.model_path is not None:
            raise ValueError("set either models (name=path,...) or model_path, not both")
        return self

    def model_specs(self) -> list[ModelSpec]:
        """The models to serve, the default (first) one first."""
        if self.models:
            specs = []
            for entry in self.models:
                name, _, location = entry.partition("=")
                specs.append(ModelSpec(name.strip(), Path(location.strip()), self.model_subfolder))
            return specs
        path = self.model_path if self.model_path is not None else default_model_path()
        return [ModelSpec(self.model_name, path, self.model_subfolder)]
