"""Converting taming-transformers / latent-diffusion checkpoints: what is refused (naming the field), what is
dropped, and that reading a `.ckpt` runs nothing from the file. Parity itself: test_taming_parity.py."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from model import CheckpointError, ConfigError, VQModel
from model.checkpoint import has_checkpoint
from model.convert import lightning_ckpt, taming, taming_config, taming_keys
from tests.support.taming import family, lightning_checkpoint, make_taming, save_lightning, save_taming, taming_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F4 = taming_yaml(family("ldm-vq-f4"))


def edited(path: str, value: Any, data: dict[str, Any] = F4) -> dict[str, Any]:
    """`data` with the dotted `path` set to `value`."""
    out = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("model.target", "taming.models.vqgan.GumbelVQ", "model.target"),
        ("model.target", "ldm.models.autoencoder.AutoencoderKL", "model.target"),
        ("model.target", "somewhere.else.VQGAN", "model.target"),
        ("model.params.remap", "data/used_codes.npy", "model.params.remap"),
        ("model.params.use_l2_norm", True, "model.params.use_l2_norm"),  # an l2-normalised codebook
        ("model.params.ddconfig.attn_type", "linear", "model.params.ddconfig.attn_type"),
        ("model.params.ddconfig.resamp_with_conv", False, "model.params.ddconfig.resamp_with_conv"),
        ("model.params.ddconfig.double_z", True, "model.params.ddconfig.double_z"),
        ("model.params.ddconfig.tanh_out", True, "model.params.ddconfig.tanh_out"),
        ("model.params.ddconfig.give_pre_end", True, "model.params.ddconfig.give_pre_end"),
        ("model.params.ddconfig.use_linear_attn", True, "model.params.ddconfig.use_linear_attn"),
        ("model.params.ddconfig.num_heads", 8, "model.params.ddconfig.num_heads"),
    ],
)
def test_unexpressible_configs_are_refused_naming_the_field(path: str, value: Any, named: str) -> None:
    with pytest.raises(ConfigError, match=f"'{named}' cannot be converted"):
        taming_config.to_vqmodel_config(edited(path, value))


def test_full_ldm_config_with_a_kl_first_stage_is_refused() -> None:
    stage = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": F4["model"]["params"]}
    data = {"model": {"params": {"first_stage_config": stage}}}
    with pytest.raises(ConfigError, match="'model.params.first_stage_config.target'.*KL autoencoder"):
        taming_config.to_vqmodel_config(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"not": "a taming config"}, "model.params"),
        (edited("model.params.ddconfig.ch", 24), "divisible by norm_num_groups"),  # taming's GroupNorm(32)
        (edited("model.params.ddconfig.ch_mult", []), "ch_mult"),
        (edited("model.params.n_embed", "8192"), "n_embed"),
    ],
)
def test_invalid_configs_are_refused(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        taming_config.to_vqmodel_config(data)


def test_training_only_fields_and_no_op_values_are_accepted() -> None:
    data = edited("model.params.sane_index_shape", True)
    data = edited("model.params.remap", None, data)
    data = edited("model.params.monitor", "val/rec_loss", data)
    data = edited("model.params.ddconfig.attn_resolutions", [7], data)  # at no level: taming builds none either
    config = taming_config.to_vqmodel_config(data)
    assert set(config.down_block_types) == {"DownEncoderBlock2D"}
    assert config.mid_block_add_attention


def test_attn_type_none_drops_every_attention() -> None:
    """latent-diffusion's `attn_type: none` makes every attention, the mid block's too, an Identity."""
    data = edited("model.params.ddconfig.attn_resolutions", [64])
    config = taming_config.to_vqmodel_config(edited("model.params.ddconfig.attn_type", "none", data))
    assert not config.mid_block_add_attention
    assert set(config.down_block_types) == {"DownEncoderBlock2D"}


def test_encoder_and_decoder_attention_levels_follow_taming_when_resolution_is_odd() -> None:
    """resolution 90, 3 levels: taming's encoder levels are 90, 45, 22, its decoder's 88, 44, 22."""
    data = edited("model.params.ddconfig.resolution", 90)
    config = taming_config.to_vqmodel_config(edited("model.params.ddconfig.attn_resolutions", [45], data))
    assert config.down_block_types == ("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D")
    assert set(config.up_block_types) == {"UpDecoderBlock2D"}


def test_key_mapping_names_entries_without_a_counterpart() -> None:
    state = {"encoder.conv_in.weight": torch.zeros(1), "encoder.down.0.block.0.temb_proj.weight": torch.zeros(1)}
    with pytest.raises(taming_keys.KeyMappingError, match=r"temb_proj"):
        taming_keys.to_diffusers(state, levels=3)


def test_a_checkpoint_whose_attention_does_not_fit_the_config_is_refused(tmp_path: Path) -> None:
    fam = family("ldm-vq-f8")
    ckpt, config = save_taming(make_taming(fam), fam, tmp_path)
    config.write_text(yaml.safe_dump(edited("model.params.ddconfig.attn_resolutions", [], taming_yaml(fam))))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['decoder.up_blocks.0.attentions"):
        VQModel.from_taming(ckpt, config)


def test_bare_state_dict_and_the_dropped_entries(tmp_path: Path) -> None:
    fam = family("ldm-vq-f4")
    reference = make_taming(fam)
    bare = {**reference.state_dict(), "loss.logvar": torch.zeros(()), "colorize": torch.randn(3, 5, 1, 1)}
    ckpt = tmp_path / "bare.ckpt"
    torch.save(bare, ckpt)
    config = tmp_path / "bare.yaml"
    config.write_text(yaml.safe_dump(taming_yaml(fam)))
    _, state = taming.load(ckpt, config)
    assert not any(k.startswith(("loss", "colorize")) for k in state)
    model = VQModel.from_taming(ckpt, config)
    torch.testing.assert_close(model.quantize.embedding.weight, reference.quantize.embedding.weight)


class RunsACommand:
    """Pickles as a call of os.system: what a hostile checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class DeletesADirectory:
    """Pickles as a call of shutil.rmtree, a module torch does not block outright."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return shutil.rmtree, (str(self.victim),)


def test_lightning_bookkeeping_loads_as_placeholders(tmp_path: Path) -> None:
    """A callback state keyed by Lightning's ModelCheckpoint class and Namespace hyper-parameters: refused by plain
    weights-only loading, read here as inert placeholders (Lightning is not installed)."""
    fam = family("ldm-vq-f4")
    ckpt = save_lightning(lightning_checkpoint(make_taming(fam).state_dict()), tmp_path / "last.ckpt")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(ckpt, weights_only=True)
    loaded = lightning_ckpt.load_tensors(ckpt)
    assert isinstance(loaded["hyper_parameters"], lightning_ckpt.Placeholder)
    (callback_class,) = loaded["callbacks"]
    assert issubclass(callback_class, lightning_ckpt.Placeholder)
    assert loaded["global_step"] == 1200
    assert len(lightning_ckpt.state_dict_of(loaded, ckpt)) > 0


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    fam = family("ldm-vq-f4")
    marker = tmp_path / "pwned"
    obj = lightning_checkpoint(make_taming(fam).state_dict())
    obj["hyper_parameters"] = RunsACommand(marker)
    ckpt = save_lightning(obj, tmp_path / "last.ckpt")
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump(taming_yaml(fam)))
    with pytest.raises(lightning_ckpt.CkptError, match="weights-only"):
        VQModel.from_taming(ckpt, config)
    assert not marker.exists()


def test_an_unknown_callable_in_a_checkpoint_is_never_called(tmp_path: Path) -> None:
    """Globals outside torch's block list load as placeholders: the call is a placeholder's construction."""
    fam = family("ldm-vq-f4")
    victim = tmp_path / "keep"
    victim.mkdir()
    obj = lightning_checkpoint(make_taming(fam).state_dict())
    obj["hyper_parameters"] = DeletesADirectory(victim)
    ckpt = save_lightning(obj, tmp_path / "last.ckpt")
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump(taming_yaml(fam)))
    VQModel.from_taming(ckpt, config)
    assert victim.is_dir()
    assert isinstance(lightning_ckpt.load_tensors(ckpt)["hyper_parameters"], lightning_ckpt.Placeholder)


def test_files_that_are_not_checkpoints_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "last.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(lightning_ckpt.CkptError, match="last.ckpt"):
        lightning_ckpt.load_tensors(junk)
    torch.save({"state_dict": {"epoch": 3}}, junk)
    with pytest.raises(lightning_ckpt.CkptError, match="holds no tensors"):
        lightning_ckpt.state_dict_of(lightning_ckpt.load_tensors(junk), junk)
    bad_yaml = tmp_path / "model.yaml"
    bad_yaml.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not a readable YAML"):
        taming.load_config(bad_yaml)


def test_pair_discovery(tmp_path: Path) -> None:
    assert taming.find_pair(tmp_path) is None
    assert not has_checkpoint(tmp_path)
    (tmp_path / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"exactly one .ckpt and one .yaml.*\['last.ckpt'\] and \[\]"):
        has_checkpoint(tmp_path)
    (tmp_path / "model.yaml").write_text("model: {}")
    assert taming.find_pair(tmp_path) == (tmp_path / "last.ckpt", tmp_path / "model.yaml")
    (tmp_path / "epoch=10.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"\['epoch=10.ckpt', 'last.ckpt'\]"):
        taming.find_pair(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # diffusers' format wins over whatever else is there
    assert has_checkpoint(tmp_path)
