"""The serving side never loads training code or dev-only packages.

Each import runs in a fresh interpreter (an import made earlier in the test session would hide a leak), from the
repository root as `python -m service` runs. What must stay unloaded: `model.training` and the training script, and
the packages only the dev extra installs (scikit-learn, scikit-image and SciPy under them, matplotlib, diffusers,
LitServe). `model/training` is not in the installed wheel either (pyproject.toml); import-linter's contracts check
the same layering statically (`make lint`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.constants import ROOT

TRAINING_AND_DEV_ONLY = (
    "model.training",
    "model.train",
    "sklearn",
    "skimage",
    "scipy",
    "matplotlib",
    "diffusers",
    "litserve",
    "taming",  # taming-transformers: the parity tests' reference, never the converter's
    "einops",
)
# model's serving modules, the ones the import-linter contract keeps apart from model.training
MODEL_SERVING = (
    "model.vqmodel",
    "model.autoencoder",
    "model.layers",
    "model.quantizer",
    "model.checkpoint",
    "model.convert.taming",
    "model.config",
    "model.pixels",
    "model.device",
)


def loaded_after(*modules: str) -> set[str]:
    """The names of sys.modules, after importing `modules` in a fresh interpreter from the repository root."""
    code = f"import json, sys\nimport {', '.join(modules)}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "modules",
    [
        ("model",),
        MODEL_SERVING,
        ("service",),
        ("service.__main__",),  # `python -m service`, the image's ENTRYPOINT
        ("service.cli",),  # the `vqserve` command
    ],
    ids=["model", "model-serving-modules", "service", "service-main", "service-cli"],
)
def test_serving_imports_leave_training_and_dev_packages_unloaded(modules: tuple[str, ...]) -> None:
    loaded = loaded_after(*modules)
    assert set(modules) <= loaded
    leaked = sorted(
        name
        for name in loaded
        if any(name == banned or name.startswith(banned + ".") for banned in TRAINING_AND_DEV_ONLY)
    )
    assert not leaked, f"importing {', '.join(modules)} loaded {leaked}"
