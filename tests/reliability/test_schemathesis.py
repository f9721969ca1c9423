"""Property-based fuzzing of the HTTP API from its own schema: schemathesis reads the app's /openapi.json and
generates requests for every operation, both valid by the schema (positive) and violating it (negative).
Whatever it sends, the running service answers without a 5xx, with a status the schema documents, a
documented content type and a body that matches the documented schema.

Bounded for CI: MAX_EXAMPLES per operation and mode, derandomized so CI sends the same requests every run
(VQSERVE_FUZZ_EXAMPLES raises the count for a long exploratory run). A real uvicorn on 127.0.0.1 (in a
thread of this process) serves the tiny model. Hypothesis drives the examples directly (`as_strategy`):
schemathesis' own pytest plugin does not load under pytest 9."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings
from tests.support.servers import Server, serve_in_thread

pytestmark = pytest.mark.timeout(180)
MAX_EXAMPLES = int(os.environ.get("VQSERVE_FUZZ_EXAMPLES", "25"))
# interop routes (issue 6, service/routes/oip.py) that answer 404 for an unknown model or version without
# documenting it: no 5xx and conforming bodies are still checked there; see RELIABILITY.md "Known gaps"
UNDOCUMENTED_404 = {
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/ready",
    "GET /v2/models/{name}/versions/{version}",
    "GET /v2/models/{name}/versions/{version}/ready",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
}


@schemathesis.serializer("tensor/binary")
def _tensor_bytes(ctx: object, value: object) -> bytes:
    """Raw tensor bodies (format: binary in the schema) are sent as the bytes generated for them."""
    return value if isinstance(value, bytes) else str(value).encode()


# the schema of the app as built (no model is loaded to produce it), one test per operation
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(warmup=False)).openapi())
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}


@pytest.fixture(scope="module")
def fuzz_server(tiny_64ch_checkpoint: Path) -> Iterator[Server]:
    with serve_in_thread(tiny_64ch_checkpoint, max_body_bytes=1_000_000, max_pixels=65_536) as server:
        yield server


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_never_fails_and_conforms(fuzz_server: Server, label: str) -> None:
    operation = OPERATIONS[label]
    cases = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=2 * MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=fuzz_server.url, timeout=30)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
        checks = [content_type_conformance, response_schema_conformance]
        if not (label in UNDOCUMENTED_404 and response.status_code == 404):
            checks.append(status_code_conformance)
        case.validate_response(response, checks=checks)

    fuzz()


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 19
    assert {"POST /encode", "POST /decode", "POST /reconstruct"} <= set(OPERATIONS)
