"""taming-transformers / latent-diffusion state-dict keys -> diffusers `VQModel` keys.

The mapping diffusers' own converters apply to latent-diffusion autoencoders (`loaders/single_file_utils.py`
`convert_ldm_vae_checkpoint`), extended with the per-level attention a VQGAN has:

    {encoder,decoder}.conv_in / conv_out          -> same
    {encoder,decoder}.norm_out                    -> conv_norm_out
    encoder.down.I.block.J  (nin_shortcut)        -> encoder.down_blocks.I.resnets.J  (conv_shortcut)
    encoder.down.I.attn.J                         -> encoder.down_blocks.I.attentions.J
    encoder.down.I.downsample.conv                -> encoder.down_blocks.I.downsamplers.0.conv
    decoder.up.I.{block,attn}.J, upsample.conv    -> decoder.up_blocks.(L-1-I).{resnets,attentions}.J, upsamplers.0
    {encoder,decoder}.mid.block_1 / block_2       -> mid_block.resnets.0 / 1;  mid.attn_1 -> mid_block.attentions.0
    attention norm / q / k / v / proj_out         -> group_norm / to_q / to_k / to_v / to_out.0 (1x1 conv -> linear)
    quantize.embedding, quant_conv, post_quant_conv -> same

taming's decoder lists `up` by resolution level (0 = full resolution), diffusers' `up_blocks` in execution order
(0 = lowest resolution): hence L-1-I. Loss (LPIPS, discriminator), EMA and colorize entries are dropped.
"""

from __future__ import annotations

import re

import torch

LDM_PREFIX = "first_stage_model."  # a full latent-diffusion checkpoint's autoencoder
# Training-only entries: the loss module (LPIPS + discriminator), latent-diffusion's EMA copy, segmentation colours.
DROPPED_PREFIXES = ("loss.", "model_ema.", "colorize")

_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_MID = {"block_1": "resnets.0", "block_2": "resnets.1", "attn_1": "attentions.0"}
_SAME = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}
_PARAM = r"(?P<param>weight|bias)"
_LEVEL_RE = re.compile(rf"^(?P<kind>block|attn)\.(?P<j>\d+)\.(?P<layer>\w+)\.{_PARAM}$")
_MID_RE = re.compile(rf"^mid\.(?P<part>block_1|block_2|attn_1)\.(?P<layer>\w+)\.{_PARAM}$")
_TOP_LEVEL = frozenset(
    {f"{m}.{p}" for m in ("quant_conv", "post_quant_conv") for p in ("weight", "bias")} | {"quantize.embedding.weight"}
)


class KeyMappingError(ValueError):
    """A taming state dict with entries that have no VQModel counterpart."""


def autoencoder_entries(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The autoencoder's own entries: `first_stage_model.` stripped when present, training-only entries dropped."""
    if any(k.startswith(LDM_PREFIX) for k in state):
        state = {k.removeprefix(LDM_PREFIX): v for k, v in state.items() if k.startswith(LDM_PREFIX)}
    return {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}


def _block_key(rest: str, block: str) -> str | None:
    """`block.J.norm1.weight` / `attn.J.q.weight` inside a level -> the key inside a diffusers block."""
    match = _LEVEL_RE.match(rest)
    if match is None:
        return None
    table, target = (_RESNET, "resnets") if match["kind"] == "block" else (_ATTENTION, "attentions")
    layer = table.get(match["layer"])
    return None if layer is None else f"{block}.{target}.{match['j']}.{layer}.{match['param']}"


def _map_key(key: str, levels: int) -> str | None:
    if key in _TOP_LEVEL:
        return key
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return None
    name, _, param = rest.partition(".")
    if name in _SAME and param in ("weight", "bias"):
        return f"{part}.{_SAME[name]}.{param}"
    mid = _MID_RE.match(rest)
    if mid is not None:
        table = _RESNET if mid["part"].startswith("block") else _ATTENTION
        layer = table.get(mid["layer"])
        return None if layer is None else f"{part}.mid_block.{_MID[mid['part']]}.{layer}.{mid['param']}"
    match = re.match(r"^(?P<dir>down|up)\.(?P<i>\d+)\.(?P<rest>.+)$", rest)
    if match is None or (match["dir"] == "down") != (part == "encoder"):
        return None
    level = int(match["i"])
    if level >= levels:
        return None
    if part == "encoder":
        block, resample, sampler = f"encoder.down_blocks.{level}", "downsample", "downsamplers"
    else:
        block, resample, sampler = f"decoder.up_blocks.{levels - 1 - level}", "upsample", "upsamplers"
    inner = match["rest"]
    if inner in (f"{resample}.conv.weight", f"{resample}.conv.bias"):
        return f"{block}.{sampler}.0.conv.{inner.rsplit('.', 1)[1]}"
    return _block_key(inner, block)


def to_diffusers(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Rename every entry of a taming autoencoder state dict with `levels` resolution levels (len(ch_mult)).

    Attention projections are 1x1 convs in taming and linear layers in diffusers: (C, C, 1, 1) -> (C, C)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in autoencoder_entries(state).items():
        new = _map_key(key, levels)
        if new is None:
            unknown.append(key)
            continue
        is_projection = any(f".{name}." in new for name in ("to_q", "to_k", "to_v", "to_out.0"))
        out[new] = tensor[:, :, 0, 0] if is_projection and tensor.ndim == 4 else tensor
    if unknown:
        raise KeyMappingError(
            f"{len(unknown)} checkpoint entries have no VQModel counterpart: {sorted(unknown)[:10]}"
            + ("..." if len(unknown) > 10 else "")
        )
    return out
