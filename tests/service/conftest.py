"""Fixtures of the service tests: the app through `TestClient` on the tiny checkpoint (`tests/conftest.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support.servers import app_client


@pytest.fixture
def make_client(tiny_checkpoint: Path) -> Iterator[object]:
    """A factory: `make_client(**settings)` -> a TestClient running the app's real lifespan."""
    with ExitStack() as clients:

        def factory(**overrides: object) -> TestClient:
            return clients.enter_context(app_client(tiny_checkpoint, **overrides))

        yield factory


@pytest.fixture
def client(make_client: object) -> TestClient:
    return make_client()  # type: ignore[operator, no-any-return]
