"""Service configuration: the only place settings are read.

Every field is an environment variable with the `VQSERVE_` prefix (`max_queue` -> `VQSERVE_MAX_QUEUE`) and a flag
of `python -m service` (`--max-queue`). Invalid values fail at startup with one line naming the flag and the
variable (`describe_invalid`); nothing else in the service reads the environment, except huggingface_hub, which reads
its own `HF_*` variables (cache, offline mode, token, endpoint) when a model path is a Hub repo id
(`service/model_source.py`). Each field's `description` is its one-line documentation: `--help` shows it, and
README's settings table is generated from it (`python -m docs.settings_table`; a test fails when the two drift).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# On CPU the cost per image falls with the batch up to 16 images of 64² or 128² and is flat from 4 images of 256²
# on (bench/README.md, "Batches on CPU"): small images batch up to 16, larger ones up to 4 images' worth of 256²
# pixels, which keeps one batch's compute near a second there.
CPU_MAX_BATCH_SIZE = 16
CPU_MAX_BATCH_PIXELS = 4 * 256 * 256
GPU_MAX_BATCH_SIZE = 16
GPU_MAX_BATCH_PIXELS = 16 * 1024 * 1024

DType = Literal["auto", "float32", "float16", "bfloat16"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def default_model_path() -> Path:
    """The shipped checkpoint, resolved inside the installed `model` package."""
    import model

    return Path(model.__file__).parent / "weights" / "default"


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: its public name and where its checkpoint lives.

    `path` is a checkpoint directory, or a Hugging Face Hub repo id `org/name[@revision]` where no such path exists;
    the engine resolves it (`service/model_source.py`) to the cached snapshot before loading."""

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
    host: str = Field(
        default="127.0.0.1",
        description="bind address (loopback unless told: the container image, compose and the manifests set `0.0.0.0`)",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="bind port")
    # models: `model_path` (+ `model_subfolder`) serves one model; `models` ("name=path,...") serves several. A path
    # may be a Hugging Face Hub repo id, org/name[@revision] (service/model_source.py)
    model_path: Path | None = Field(
        default=None,
        description="a checkpoint directory (diffusers format, or a taming `.ckpt` + `.yaml`), or a Hugging Face Hub "
        "repo id `org/name[@revision]` (a local directory of that name wins)",
        json_schema_extra={"default_text": "`model/weights/default`"},  # None: the shipped checkpoint
    )
    model_subfolder: str | None = Field(default=None, description="subfolder of the checkpoint (e.g. `vqvae`)")
    model_name: str = Field(default="default", description="public name of the `model_path` model")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="several models, `name=path,name2=path2` (paths or Hub repo ids; not with `MODEL_PATH`)",
    )
    device: str = Field(default="auto", description="`auto` (CUDA if present), `cpu`, `cuda`, `cuda:N`, `mps`")
    dtype: DType = Field(
        default="auto",
        description="`auto` (bf16/fp16 on GPU unless `force_upcast`, fp32 on CPU), `float32`, `float16`, `bfloat16`",
    )
    decoder_dtype: DType = Field(
        default="auto",
        description="the decoder's dtype alone (post_quant_conv + decoder; the encoder and quantizer keep `DTYPE`, so "
        "codes do not change); `auto`: `DTYPE`; `bfloat16` is refused on a CPU without native bf16 (avx512_bf16, "
        "amx_bf16), where it is slower",
    )
    prefetch: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="while a batch computes, copy the next full batch's inputs to the device (`auto`: on a GPU, "
        "where the copy then overlaps the compute; on a CPU there is no copy to hide)",
    )
    warmup: bool = Field(
        default=True,
        description="run each op once at the model's `sample_size` (at most the tile size) before turning ready",
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="torch intra-op threads (`0`: the CPUs the process may use: cgroup quota, affinity)",
    )
    # batching
    max_batch_size: Literal["auto"] | int = Field(  # bounds: `_auto_or_positive`, which gives the one-line message
        default="auto",
        description="images per batch (`auto`: 16 on CPU, 16 on GPU; on CPU the pixel bound binds first above 128²)",
    )
    max_batch_pixels: Literal["auto"] | int = Field(
        default="auto",
        description="image pixels per batch (`auto`: 262144 on CPU, 4 images of 256², beyond which a batch costs no "
        "less per image; 16777216 on GPU); one image larger than this still forms a batch of its own",
    )
    max_wait_ms: float = Field(
        default=5.0, ge=0, description="longest wait for requests still being decoded, from the oldest arrival"
    )
    max_queue: int = Field(default=256, ge=1, description="requests admitted but not yet computed; beyond → 429")
    request_timeout_s: float = Field(default=60.0, gt=0, description="deadline from arrival → 504")
    # tiling and memory
    tile_size: int = Field(
        default=512,
        ge=0,
        description="inputs larger than this many pixels a side (images, or the image an index/latent grid decodes "
        "to) are computed in tiles; `0` never tiles",
    )
    tile_overlap: int = Field(
        default=64, ge=0, description="pixels neighbouring tiles share, blended linearly (smaller than the tile)"
    )
    memory_budget_mb: int = Field(
        default=0,
        ge=0,
        description="activation memory one batch may take (`0`: 1/16 of the memory the process may use: the cgroup "
        "limit, else the host's)",
    )
    # limits
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="request body limit → 413")
    max_pixels: int = Field(
        default=4096 * 4096, ge=1, description="pixels per image (checked from the header, before decoding) → 413"
    )
    max_images_per_request: int = Field(default=32, ge=1, description="images per request → 413")
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="the whole body must arrive within this (slow-loris bound) → 408"
    )
    # connections, bounded by the HTTP protocol before a request reaches the app (middleware.BoundedHttpToolsProtocol)
    max_connections: int = Field(
        default=1000, ge=1, description="open connections; one more is answered 503 (`Retry-After: 1`) and closed"
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="the request line and headers must arrive within this → 408 (a connection that sends nothing "
        "is closed)",
    )
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="request line and headers together → 431")
    max_headers: int = Field(default=100, ge=1, description="header fields per request → 431")
    # codecs
    codec_threads: int = Field(
        default=0,
        ge=0,
        description="threads decoding and encoding images and tensors (`0`: the CPUs the process may use, at most 4)",
    )
    png_compress_level: int = Field(default=1, ge=0, le=9, description="PNG zlib level 0–9 (1: fast)")
    jpeg_quality: int = Field(default=95, ge=1, le=100, description="JPEG quality of replies")
    webp_quality: int = Field(default=95, ge=1, le=100, description="WebP quality of replies")
    # lifecycle and access
    graceful_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="drain bound after SIGTERM (uvicorn's bound on open requests is this rounded up to whole "
        "seconds; 0: queued work fails with 503 at once and open requests are not cut off)",
    )
    shutdown_delay_s: float = Field(default=0.0, ge=0, description="readiness 503 this long before the listener closes")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated bearer keys for inference, `/models`, `/remote/*` and `/v2/models/*`",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="allowed CORS origins")
    # None: the MoVQ-style models (norm_type "spatial", Kandinsky's decoder), as diffusers' pipelines decode them
    remote_force_not_quantize: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="model names whose `/remote/decode` skips quantization (as Kandinsky's pipeline decodes MoVQ); "
        "the `force_not_quantize` query overrides",
        json_schema_extra={"default_text": "unset: models with `norm_type: spatial`"},
    )
    log_level: LogLevel = Field(default="info", description="`debug`, `info`, `warning`, `error`, `critical`")

    @field_validator("models", "api_keys", "cors_origins", "remote_force_not_quantize", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("max_batch_size", "max_batch_pixels", mode="before")
    @classmethod
    def _auto_or_positive(cls, value: object) -> object:
        if value == "auto":
            return value
        try:
            number = int(str(value))
        except ValueError:
            raise ValueError(f"must be auto or a whole number (got {value})") from None
        if number < 1:
            raise ValueError(f"must be >= 1 (got {value})")
        return number

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps (got {value!r})")
        return value

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (got {value!r})")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        names = []
        for entry in value:
            name, sep, path = entry.partition("=")
            if not sep or not path.strip() or not _NAME_RE.match(name.strip()):
                raise ValueError(f"each entry must be name=path with a plain name (got {entry!r})")
            names.append(name.strip())
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique (got {names})")
        return value

    @model_validator(mode="after")
    def _overlap_within_tile(self) -> Settings:
        if self.tile_size and self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"{setting_names('tile_overlap')} ({self.tile_overlap}) must be smaller than "
                f"{setting_names('tile_size')} ({self.tile_size})"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> Settings:
        if self.models and self.model_path is not None:
            raise ValueError(
                f"set either {setting_names('models')} (name=path,...) or {setting_names('model_path')}, not both"
            )
        return self

    def batch_size_on(self, device_type: str) -> int:
        """VQSERVE_MAX_BATCH_SIZE, `auto` resolved for the device type the models run on ("cpu", "cuda", ...)."""
        if self.max_batch_size != "auto":
            return self.max_batch_size
        return CPU_MAX_BATCH_SIZE if device_type == "cpu" else GPU_MAX_BATCH_SIZE

    def batch_pixels_on(self, device_type: str) -> int:
        """VQSERVE_MAX_BATCH_PIXELS, `auto` resolved for the device type the models run on."""
        if self.max_batch_pixels != "auto":
            return self.max_batch_pixels
        return CPU_MAX_BATCH_PIXELS if device_type == "cpu" else GPU_MAX_BATCH_PIXELS

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


# what each setting is called outside Python, and how it is documented (`--help` and README's table, one source)
_FLAG_ALIASES = {"models": ("--model",)}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return f"VQSERVE_{name.upper()}"


def setting_names(name: str) -> str:
    """`--max-batch-size / VQSERVE_MAX_BATCH_SIZE`: how messages name a setting, both ways of giving it."""
    return f"{flag_name(name)} / {env_name(name)}"


@dataclass(frozen=True)
class SettingDoc:
    """One setting as `--help` and README's settings table show it (markdown; `--help` drops the backticks)."""

    name: str
    env: str
    flags: tuple[str, ...]  # the flag, its aliases, `--no-x` for a switch
    default: str
    description: str


def setting_docs() -> list[SettingDoc]:
    docs = []
    for name, field in Settings.model_fields.items():
        if field.description is None:
            raise TypeError(f"setting {name} has no description (Field(description=...))")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, Mapping) else {}
        shown = extra.get("default_text")
        default = str(shown) if shown is not None else _default_text(field.get_default(call_default_factory=True))
        flags = (flag_name(name), *_FLAG_ALIASES.get(name, ()))
        if field.annotation is bool:
            flags = (*flags, "--no-" + flag_name(name).removeprefix("--"))
        docs.append(SettingDoc(name, env_name(name), flags, default, field.description))
    return docs


def _default_text(value: object) -> str:
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def describe_invalid(exc: ValidationError) -> str:
    """One line for invalid settings, each problem naming the flag and the variable:
    `--max-batch-size / VQSERVE_MAX_BATCH_SIZE: must be >= 1 (got 0)` (no pydantic internals or URLs)."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        reason = _reason(error)
        if loc and str(loc[0]) in Settings.model_fields:
            problems.append(f"{setting_names(str(loc[0]))}: {reason}")
        else:  # a check across settings: its message names them
            problems.append(reason)
    return "; ".join(problems)


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_BOUND_KEYS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}


def _reason(error: Mapping[str, Any]) -> str:
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    got = f" (got {given})" if not isinstance(given, dict) else ""
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {ctx[_BOUND_KEYS[kind]]}{got}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"must be a whole number{got}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false{got}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}{got}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{str(error['msg']).lower()}{got}"
