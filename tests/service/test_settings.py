"""Settings: env prefix, comma lists, validation at startup, and flags that mirror every setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from docs.settings_table import README, with_table
from service.__main__ import build_parser, settings_from_args
from service.settings import Settings, default_model_path, describe_invalid, setting_docs


def test_env_prefix_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQSERVE_MAX_QUEUE", "7")
    monkeypatch.setenv("VQSERVE_API_KEYS", "alpha, beta")
    monkeypatch.setenv("VQSERVE_MODELS", "a=/ckpt/a,b=/ckpt/b")
    settings = Settings()
    assert settings.max_queue == 7
    assert settings.api_keys == ["alpha", "beta"]
    specs = settings.model_specs()
    assert [(s.name, s.path) for s in specs] == [("a", Path("/ckpt/a")), ("b", Path("/ckpt/b"))]


def test_default_model_is_the_shipped_checkpoint() -> None:
    (spec,) = Settings().model_specs()
    assert spec.name == "default"
    assert spec.path == default_model_path()
    assert spec.path.parts[-3:] == ("model", "weights", "default")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device", "tpu"),
        ("dtype", "float8"),
        ("max_batch_size", 0),
        ("png_compress_level", 10),
        ("models", "no-equals-sign"),
        ("models", "a=/x,a=/y"),
    ],
)
def test_invalid_values_fail_naming_the_setting(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_models_and_model_path_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="not both"):
        Settings(models="a=/x", model_path="/y")


def test_every_setting_has_a_flag() -> None:
    flags = {opt for action in build_parser()._actions for opt in action.option_strings}
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in flags, name


def test_help_names_the_real_default_model() -> None:
    """`--model-path` unset serves the shipped checkpoint, and `--help` says so rather than `None`."""
    helps = {opt: action.help for action in build_parser()._actions for opt in action.option_strings}
    assert "default model/weights/default" in str(helps["--model-path"])
    assert "default 256" in str(helps["--max-queue"])  # the others print the setting's own default


def test_every_flag_has_the_readme_description() -> None:
    """`--help` and README's table say the same: both come from the settings' descriptions."""
    helps = {opt: action.help for action in build_parser()._actions for opt in action.option_strings}
    for doc in setting_docs():
        assert doc.description.strip(), doc.name
        shown = str(helps[doc.flags[0]]).replace("%%", "%")
        assert shown.startswith(doc.description.replace("`", "")), (doc.name, shown)
        assert f"env {doc.env}; default {doc.default.replace('`', '')}" in shown, (doc.name, shown)


def test_help_gives_the_real_remote_force_not_quantize_default() -> None:
    helps = {opt: action.help for action in build_parser()._actions for opt in action.option_strings}
    assert "default unset: models with norm_type: spatial" in str(helps["--remote-force-not-quantize"])
    assert "None" not in str(helps["--remote-force-not-quantize"])


def test_readme_settings_table_is_generated_from_the_settings() -> None:
    """README's table is exactly what `python -m docs.settings_table` writes; a drift fails here."""
    readme = README.read_text(encoding="utf-8")
    assert with_table(readme) == readme, "README.md's settings table is stale: run python -m docs.settings_table"
    for doc in setting_docs():
        assert f"| `{doc.env}` |" in readme, doc.env


@pytest.mark.parametrize(
    ("given", "line"),
    [
        ({"max_batch_size": 0}, "--max-batch-size / VQSERVE_MAX_BATCH_SIZE: must be >= 1 (got 0)"),
        ({"port": "eighty"}, "--port / VQSERVE_PORT: must be a whole number (got eighty)"),
        ({"png_compress_level": 10}, "--png-compress-level / VQSERVE_PNG_COMPRESS_LEVEL: must be <= 9 (got 10)"),
        ({"device": "tpu"}, "--device / VQSERVE_DEVICE: must be auto, cpu, cuda, cuda:N or mps (got 'tpu')"),
        ({"tile_size": 64, "tile_overlap": 64}, "--tile-overlap / VQSERVE_TILE_OVERLAP (64) must be smaller than"),
    ],
)
def test_invalid_settings_read_as_one_line_naming_flag_and_variable(given: dict[str, object], line: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**given)
    message = describe_invalid(caught.value)
    assert message.startswith(line), message
    assert "\n" not in message
    assert "pydantic" not in message
    assert "http" not in message


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQSERVE_MAX_QUEUE", "7")
    monkeypatch.setenv("VQSERVE_PORT", "9000")
    settings = settings_from_args(
        ["--max-queue", "3", "--model", "a=/x", "--model", "b=/y", "--no-warmup", "--dtype", "float16"]
    )
    assert settings.max_queue == 3
    assert settings.port == 9000
    assert settings.models == ["a=/x", "b=/y"]
    assert settings.warmup is False
    assert settings.dtype == "float16"


def test_connection_bounds_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQSERVE_MAX_CONNECTIONS", "50")
    monkeypatch.setenv("VQSERVE_HEADER_TIMEOUT_S", "2.5")
    settings = settings_from_args(["--max-header-bytes", "8192", "--max-headers", "20"])
    assert (settings.max_connections, settings.header_timeout_s) == (50, 2.5)
    assert (settings.max_header_bytes, settings.max_headers) == (8192, 20)
    defaults = {name: Settings.model_fields[name].default for name in ("max_connections", "header_timeout_s")}
    assert defaults == {"max_connections": 1000, "header_timeout_s": 10.0}
    assert Settings.model_fields["max_header_bytes"].default == 64 * 1024
    assert Settings.model_fields["max_headers"].default == 100


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_connections", 0), ("header_timeout_s", 0), ("max_header_bytes", 512), ("max_headers", 0)],
)
def test_connection_bounds_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})
