"""taming-transformers / latent-diffusion YAML configs -> `VQModelConfig`, refusing what a VQModel cannot express.

The architecture of taming's `Encoder` / `Decoder` (`taming/modules/diffusionmodules/model.py`) is the one
diffusers' `VQModel` was ported from: level `i` of `ch_mult` is a block of `ch * ch_mult[i]` channels with
`num_res_blocks` resnets (the decoder `num_res_blocks + 1`), attention after every resnet of a level whose
resolution is in `attn_resolutions`, one attention in the mid block, GroupNorm(32, eps 1e-6) and swish throughout.
The quantizer (`VectorQuantizer2`) is a plain nearest-code lookup at inference: its `beta` and `legacy` flag only
weigh the training loss. Everything else that would change the forward pass is refused, naming the YAML field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import ConfigError, VQModelConfig

# `target`s whose first stage is taming's VQModel architecture with a VectorQuantizer2 codebook.
VQ_TARGETS = frozenset(
    {
        "taming.models.vqgan.VQModel",
        "taming.models.vqgan.VQNoDiscModel",
        "ldm.models.autoencoder.VQModel",
        "ldm.models.autoencoder.VQModelInterface",
    }
)
# `target`s refused with the reason (what about them a VQModel cannot express).
REFUSED_TARGETS = {
    "taming.models.vqgan.GumbelVQ": "a Gumbel-softmax quantizer (quantize.proj + quantize.embed)",
    "taming.models.vqgan.EMAVQ": "an EMA codebook quantizer",
    "taming.models.vqgan.VQSegmentationModel": "a segmentation-map model",
    "ldm.models.autoencoder.AutoencoderKL": "a KL autoencoder (no codebook)",
}
# First-stage params that only concern training or bookkeeping: ignored.
_TRAINING_PARAMS = frozenset(
    {
        "ddconfig",
        "n_embed",
        "embed_dim",
        "lossconfig",
        "ckpt_path",
        "ignore_keys",
        "image_key",
        "colorize_nlabels",
        "monitor",
        "sane_index_shape",  # only the shape the indices are returned in
        "batch_resize_range",
        "lr_g_factor",
        "scheduler_config",
        "use_ema",  # the EMA copy's keys (model_ema.*) are dropped; the trained weights are converted
        "beta",
        "legacy",
    }
)
# ddconfig fields read into the config, and those that must hold their default for the mapping to be exact.
_DDCONFIG_READ = frozenset(
    {"ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels"}
)
_DDCONFIG_DEFAULTS: dict[str, Any] = {
    "double_z": False,  # taming's VQModel feeds z_channels (not 2 * z_channels) into quant_conv
    "resamp_with_conv": True,  # False: average-pool / conv-less resampling, which diffusers' blocks do not have
    "give_pre_end": False,
    "tanh_out": False,
    "use_linear_attn": False,
}
# dropout: inference runs in eval mode; use_timestep: taming's Encoder / Decoder take it as an ignored keyword
_DDCONFIG_IGNORED = frozenset({"dropout", "use_timestep"})
_ATTN_TYPES = ("vanilla", "vanilla-xformers", "none")  # "linear" is LinAttnBlock: not a VQModel attention
NORM_GROUPS = 32  # taming's Normalize()
DEFAULT_SCALE_FACTOR = 1.0  # latent-diffusion's LatentDiffusion(scale_factor=1.0): VQ latents are used unscaled


def refuse(field: str, why: str) -> ConfigError:
    return ConfigError(f"taming config field {field!r} cannot be converted: {why}")


def first_stage(data: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any], float]:
    """(target, field path, params, scaling factor) of the VQ first stage of a taming or latent-diffusion config.

    A taming / first-stage YAML has `model.params.ddconfig`; a full latent-diffusion YAML nests the autoencoder in
    `model.params.first_stage_config` (its weights are then `first_stage_model.*`) and may set `scale_factor`."""
    model = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(model, Mapping) or not isinstance(model.get("params"), Mapping):
        raise ConfigError("taming config has no 'model.params' mapping (is this a taming / latent-diffusion YAML?)")
    params = model["params"]
    stage = params.get("first_stage_config")
    if isinstance(stage, Mapping):
        scale = params.get("scale_factor", DEFAULT_SCALE_FACTOR)
        stage_params = stage.get("params")
        if not isinstance(stage_params, Mapping):
            raise ConfigError("taming config has no 'model.params.first_stage_config.params' mapping")
        return str(stage.get("target", "")), "model.params.first_stage_config", stage_params, float(scale)
    return str(model.get("target", "")), "model", params, DEFAULT_SCALE_FACTOR


def _check_target(target: str, where: str) -> None:
    if target in REFUSED_TARGETS:
        raise refuse(f"{where}.target", f"{target} is {REFUSED_TARGETS[target]}")
    if target and target not in VQ_TARGETS:
        raise refuse(f"{where}.target", f"{target!r} is not one of {sorted(VQ_TARGETS)}")


def _check_params(params: Mapping[str, Any], where: str) -> None:
    for name, value in params.items():
        if name in _TRAINING_PARAMS:
            continue
        if name == "remap":
            if value is not None:
                raise refuse(f"{where}.params.remap", "remapped code indices (a `used` table) are not supported")
            continue
        raise refuse(f"{where}.params.{name}", "unknown field; it may change the model, so it is not ignored")


def _check_ddconfig(dd: Mapping[str, Any], where: str) -> None:
    for name, value in dd.items():
        field = f"{where}.params.ddconfig.{name}"
        if name in _DDCONFIG_READ or name in _DDCONFIG_IGNORED:
            continue
        if name in _DDCONFIG_DEFAULTS:
            if bool(value) != _DDCONFIG_DEFAULTS[name]:
                raise refuse(field, f"{value!r} has no VQModel equivalent (only {_DDCONFIG_DEFAULTS[name]!r})")
            continue
        if name == "attn_type":
            if value not in _ATTN_TYPES:
                raise refuse(field, f"{value!r} attention has no VQModel equivalent (use one of {_ATTN_TYPES})")
            continue
        raise refuse(field, "unknown field; it may change the model, so it is not ignored")
    missing = sorted(_DDCONFIG_READ - set(dd) - {"attn_resolutions"})
    if missing:
        raise ConfigError(f"taming config {where}.params.ddconfig lacks {missing}")


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"taming config field {field!r} must be an integer, got {value!r}")
    return value


def level_resolutions(resolution: int, levels: int) -> tuple[list[int], list[int]]:
    """The resolution taming's encoder and decoder assign to each level (index = ch_mult index).

    The encoder halves from `resolution` down; the decoder doubles from `resolution // 2**(levels-1)` up, so the two
    differ when `resolution` does not divide by 2**(levels-1) (diffusers keeps separate down and up block types)."""
    encoder = [resolution]
    for _ in range(levels - 1):
        encoder.append(encoder[-1] // 2)
    lowest = resolution // 2 ** (levels - 1)
    decoder = [lowest * 2 ** (levels - 1 - i) for i in range(levels)]
    return encoder, decoder


def to_vqmodel_config(data: Mapping[str, Any]) -> VQModelConfig:
    """The `VQModelConfig` of a parsed taming / latent-diffusion YAML; `ConfigError` naming what cannot map."""
    target, where, params, scale = first_stage(data)
    _check_target(target, where)
    _check_params(params, where)
    dd = params.get("ddconfig")
    if not isinstance(dd, Mapping):
        raise ConfigError(f"taming config has no '{where}.params.ddconfig' mapping")
    _check_ddconfig(dd, where)
    prefix = f"{where}.params.ddconfig."
    ch = _int(dd["ch"], prefix + "ch")
    ch_mult = dd["ch_mult"]
    if not isinstance(ch_mult, list | tuple) or not ch_mult:
        raise ConfigError(f"taming config field {prefix + 'ch_mult'!r} must be a non-empty list, got {ch_mult!r}")
    mults = [_int(m, prefix + "ch_mult") for m in ch_mult]
    resolution = _int(dd["resolution"], prefix + "resolution")
    attn = dd.get("attn_resolutions") or []
    if not isinstance(attn, list | tuple):
        raise ConfigError(f"taming config field {prefix + 'attn_resolutions'!r} must be a list, got {attn!r}")
    attn_res = {_int(r, prefix + "attn_resolutions") for r in attn}
    attention = dd.get("attn_type", "vanilla") != "none"  # "none": every attention (mid included) is an Identity
    encoder_res, decoder_res = level_resolutions(resolution, len(mults))
    down = ["AttnDownEncoderBlock2D" if attention and r in attn_res else "DownEncoderBlock2D" for r in encoder_res]
    up_by_level = ["AttnUpDecoderBlock2D" if attention and r in attn_res else "UpDecoderBlock2D" for r in decoder_res]
    for key in ("n_embed", "embed_dim"):
        if key not in params:
            raise ConfigError(f"taming config {where}.params lacks {key!r}")
    try:
        return VQModelConfig(
            in_channels=_int(dd["in_channels"], prefix + "in_channels"),
            out_channels=_int(dd["out_ch"], prefix + "out_ch"),
            down_block_types=tuple(down),
            up_block_types=tuple(reversed(up_by_level)),  # diffusers' up_blocks run from the lowest resolution
            block_out_channels=tuple(ch * m for m in mults),
            layers_per_block=_int(dd["num_res_blocks"], prefix + "num_res_blocks"),
            act_fn="silu",
            latent_channels=_int(dd["z_channels"], prefix + "z_channels"),
            sample_size=resolution,
            num_vq_embeddings=_int(params["n_embed"], f"{where}.params.n_embed"),
            norm_num_groups=NORM_GROUPS,
            vq_embed_dim=_int(params["embed_dim"], f"{where}.params.embed_dim"),
            scaling_factor=scale,
            mid_block_add_attention=attention,
        )
    except ConfigError as exc:
        raise ConfigError(f"taming config {where} maps to an invalid VQModel config: {exc}") from exc
