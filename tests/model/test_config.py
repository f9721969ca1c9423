"""Config fields, defaults and validation match diffusers' VQModel."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path

import pytest
from diffusers import VQModel as DiffusersVQModel

from model import ConfigError, VQModel, VQModelConfig

from .reference import REAL_CONFIGS, real_config


def test_fields_and_defaults_equal_diffusers() -> None:
    params = inspect.signature(DiffusersVQModel.__init__).parameters
    theirs = {name: p.default for name, p in params.items() if name != "self"}
    ours = {f.name: f.default for f in dataclasses.fields(VQModelConfig) if f.name != "extra"}
    assert set(ours) == set(theirs)
    for name, default in theirs.items():
        assert ours[name] == default, name


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_real_configs_parse(name: str) -> None:
    data = real_config(name)
    config = VQModelConfig.from_dict(data)
    assert config.num_vq_embeddings == data["num_vq_embeddings"]
    assert config.downsample_factor == 2 ** (len(data["block_out_channels"]) - 1)
    round_trip = VQModelConfig.from_dict(config.to_dict())
    assert round_trip == config


def test_unknown_keys_are_ignored_with_a_note(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="model.config"):
        config = VQModelConfig.from_dict({"_class_name": "VQModel", "some_future_field": 1, "latent_channels": 4})
    assert config.latent_channels == 4
    assert config.extra == {"some_future_field": 1}
    assert "some_future_field" in caplog.text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"latent_channels": 0}, "latent_channels"),
        ({"act_fn": "tanh"}, "act_fn"),
        ({"norm_type": "batch"}, "norm_type"),
        ({"down_block_types": ["CrossAttnDownBlock2D"]}, "down_block_types"),
        ({"block_out_channels": [64, 128]}, "down_block_types has 1 entries"),
        ({"block_out_channels": [48]}, "divisible by norm_num_groups"),
        ({"num_vq_embeddings": "many"}, "num_vq_embeddings"),
        ({"_class_name": "AutoencoderKL"}, "AutoencoderKL"),
    ],
)
def test_invalid_values_are_rejected(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VQModelConfig.from_dict(fields)


def test_invalid_json_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        VQModelConfig.from_json_file(tmp_path / "config.json")


def test_saved_config_is_what_diffusers_writes(tmp_path: Path) -> None:
    fields = {
        "block_out_channels": [32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "latent_channels": 4,
        "num_vq_embeddings": 32,
    }
    VQModel(**fields).save_pretrained(tmp_path / "ours")
    DiffusersVQModel(**fields).save_pretrained(tmp_path / "theirs")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "config.json").read_text())
    assert set(ours) == set(theirs)
    for key in ours.keys() - {"_diffusers_version"}:
        assert ours[key] == theirs[key], key
