"""One CPU story: the batch bounds the service picks on CPU are the ones every document and manifest states, and every
container or manifest that must be reachable from outside sets `VQSERVE_HOST=0.0.0.0` (the default is loopback)."""

from __future__ import annotations

import re

from bench.service_vs_peers import VQSERVE_BENCH_ENV
from service.settings import CPU_MAX_BATCH_PIXELS, CPU_MAX_BATCH_SIZE, GPU_MAX_BATCH_SIZE, Settings
from tests.deploy.conftest import DEPLOY, K8S, load_yaml
from tests.support.constants import ROOT


def _literals(kustomization: str) -> dict[str, str]:
    generator = load_yaml(K8S / kustomization)["configMapGenerator"][0]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def _row(text: str, variable: str) -> str:
    (row,) = [line for line in text.splitlines() if line.startswith(f"| `{variable}`")]
    return row


def test_the_default_is_auto_and_resolves_per_device() -> None:
    assert Settings().max_batch_size == "auto"
    assert Settings().batch_size_on("cpu") == CPU_MAX_BATCH_SIZE
    assert Settings().batch_size_on("cuda") == GPU_MAX_BATCH_SIZE


def test_cpu_manifests_use_the_cpu_value() -> None:
    cpu = _literals("overlays/cpu/kustomization.yaml")
    assert cpu["VQSERVE_MAX_BATCH_SIZE"] == str(CPU_MAX_BATCH_SIZE)
    assert cpu["VQSERVE_MAX_BATCH_PIXELS"] == str(CPU_MAX_BATCH_PIXELS)
    assert _literals("base/kustomization.yaml")["VQSERVE_MAX_BATCH_SIZE"] == "auto"  # device auto, batch auto
    compose = load_yaml(ROOT / "docker-compose.yml")["services"]["vqserve-cpu"]["environment"]
    assert compose["VQSERVE_MAX_BATCH_SIZE"] == str(CPU_MAX_BATCH_SIZE)
    assert compose["VQSERVE_MAX_BATCH_PIXELS"] == str(CPU_MAX_BATCH_PIXELS)


def test_the_service_benchmark_measures_the_defaults() -> None:
    """The headline compares the service as it ships: no batch setting of the benchmark's own."""
    assert not any(name.startswith("VQSERVE_MAX_BATCH") for name in VQSERVE_BENCH_ENV)


def test_the_documents_state_the_same_values() -> None:
    readme = (ROOT / "README.md").read_text()
    row = _row(readme, "VQSERVE_MAX_BATCH_SIZE")
    assert "`auto`" in row
    assert f"{CPU_MAX_BATCH_SIZE} on CPU" in row
    assert f"{GPU_MAX_BATCH_SIZE} on GPU" in row
    deploy_row = _row((DEPLOY / "README.md").read_text(), "VQSERVE_MAX_BATCH_SIZE")
    assert f"{CPU_MAX_BATCH_SIZE} on CPU" in deploy_row
    assert f"{GPU_MAX_BATCH_SIZE} on GPU" in deploy_row
    pixels_row = _row(readme, "VQSERVE_MAX_BATCH_PIXELS")
    assert f"{CPU_MAX_BATCH_PIXELS} on CPU" in pixels_row
    bench = (ROOT / "bench" / "README.md").read_text()
    assert f"`VQSERVE_MAX_BATCH_SIZE=auto` is {CPU_MAX_BATCH_SIZE}" in bench
    assert f"`VQSERVE_MAX_BATCH_PIXELS=auto` is {CPU_MAX_BATCH_PIXELS}" in bench
    for name, text in {"README.md": readme, "bench/README.md": bench}.items():
        assert not re.search(r"MAX_BATCH_SIZE` small \(\d", text), f"{name} gives a CPU batch range of its own"
    # every --max-batch-size given in a CPU example is the CPU value
    for text in (readme, (DEPLOY / "README.md").read_text()):
        for line in text.splitlines():
            if "vqserve:cpu" in line and "--max-batch-size" in line:
                assert f"--max-batch-size {CPU_MAX_BATCH_SIZE}" in line, line


def test_everything_reachable_from_outside_binds_all_interfaces() -> None:
    assert Settings().host == "127.0.0.1"
    assert _literals("base/kustomization.yaml")["VQSERVE_HOST"] == "0.0.0.0"
    compose = load_yaml(ROOT / "docker-compose.yml")
    for name in ("vqserve", "vqserve-cpu"):
        assert compose["services"][name]["environment"]["VQSERVE_HOST"] == "0.0.0.0"
    assert "VQSERVE_HOST=0.0.0.0" in (ROOT / "Dockerfile").read_text()
    isvc = load_yaml(K8S / "extras" / "kserve-inferenceservice.yaml")
    env = {item["name"]: item["value"] for item in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["VQSERVE_HOST"] == "0.0.0.0"
    assert "`127.0.0.1`" in _row((ROOT / "README.md").read_text(), "VQSERVE_HOST")
