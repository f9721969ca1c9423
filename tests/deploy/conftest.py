"""Shared paths and loaders for the deployment tests (all offline, no container engine, no cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.constants import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def load_yaml(path: Path) -> Any:
    """One YAML document, parsed safely."""
    return yaml.safe_load(path.read_text())


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
