"""Property-based fuzzing of the HTTP API from its own schema: schemathesis reads the app's /openapi.json and
generates requests for every operation, both valid by the schema (positive) and violating it (negative), and,
for the operations that take tensors, coherent tensor requests that reach the model's checks (raw
`tensor/binary` bodies whose bytes fit their `shape` and `dtype`, v2 inference requests in JSON and with the
binary-data extension, with NaN, inf, huge and subnormal values and latent factors).

The property, on every operation: any response is either a documented 2xx (status, content type and body as
the schema says; float tensors in it all finite), or a 4xx in the documented error shape (`{"error": {"code",
"message"}}` with the code the error table gives that status; `{"error": "<message>"}` inside /v2). A 5xx is
a real server fault (engine failure, shutdown, deadline: `test_faults.py`, `test_shutdown.py`), and the fuzz
server has none, so any 5xx here fails.

Bounded for CI: 2 * MAX_EXAMPLES per operation (shared by its strategies; half of them coherent tensor requests
where there are), derandomized so CI sends the same requests every run (VQSERVE_FUZZ_EXAMPLES raises the count
for a long exploratory run). A real uvicorn on 127.0.0.1 (in a thread of this process) serves the tiny model.
Hypothesis drives the examples directly (`as_strategy`): schemathesis' own pytest plugin does not load under
pytest 9."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.errors import ERROR_TABLE
from service.settings import Settings
from tests.support.images import png
from tests.support.routes import routes_with_paths
from tests.support.servers import Server, serve_in_thread

pytestmark = pytest.mark.timeout(180)
MAX_EXAMPLES = int(os.environ.get("VQSERVE_FUZZ_EXAMPLES", "25"))
D = 4  # the tiny model's vq_embed_dim
FACTOR = 2  # its downsample factor
CODEBOOK = 64

# schemathesis generates `format: binary` bodies as `Binary` (a `str` whose text is empty, the bytes in `.data`):
# the built-in octet-stream serializer sends those bytes (`str(value)` sent every tensor body empty before)
schemathesis.serializer.alias("tensor/binary", "application/octet-stream")

# the schema of the app as built (no model is loaded to produce it), one test per operation
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(warmup=False)).openapi())
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}
CODES_FOR_STATUS: dict[int, set[str]] = {}
for _status, _code in ERROR_TABLE.values():
    CODES_FOR_STATUS.setdefault(_status, set()).add(_code)


# values that break arithmetic: non-finite, zero, subnormal (in float64 and float32), near float32's limits
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e-320, 1e-39, 1.2e-38, 3.4e38, 3.5e38, 1e300, -1.0]
FINE = [0.18215, 0.5, 1.0, 2.0, 1e-3, 1e3]
factors = st.one_of(st.none(), st.sampled_from(FINE), st.sampled_from(SPECIAL), st.sampled_from(SPECIAL), st.floats())
json_factors = st.one_of(  # JSON has no NaN or inf
    st.none(),
    st.sampled_from([v for v in SPECIAL + FINE if math.isfinite(v)]),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def float_values(draw: st.DrawFn, count: int) -> np.ndarray:
    """`count` float64 values: seeded normals at a drawn magnitude, sometimes with one special value planted."""
    scale = draw(st.sampled_from([1.0, 1.0, 10.0, 6e4, 1e30, 3e38]))
    values = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(count) * scale
    if draw(st.booleans()):
        values[draw(st.integers(0, count - 1))] = draw(st.sampled_from(SPECIAL))
    return values


def tensor_bytes(values: np.ndarray, dtype: str) -> bytes:
    """Little-endian bytes of `values` in `dtype` (bfloat16: float32's upper half, as torch stores it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == "bfloat16":
            return (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
        return values.astype({"float16": "<f2", "float32": "<f4", "uint8": "u1"}[dtype]).tobytes()


@st.composite
def raw_tensor(
    draw: st.DrawFn, channels: int, dtypes: list[str], side: int = 4, multiple: int = 1
) -> tuple[list[int], str, bytes]:
    """(shape, dtype, body) of a small (B, C, H, W) tensor (sides `multiple`s of up to `side`): mostly consistent,
    sometimes a lying shape, a wrong channel count or a body a few bytes short."""
    shape = [
        draw(st.integers(1, 2)),
        draw(st.sampled_from([channels, channels, channels, 1])),
        multiple * draw(st.integers(1, side)),
        multiple * draw(st.integers(1, side)),
    ]
    dtype = draw(st.sampled_from(dtypes))
    count = math.prod(shape)
    if dtype == "uint8":
        body = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, count, dtype=np.uint8).tobytes()
    else:
        body = tensor_bytes(draw(float_values(count)), dtype)
    lie = draw(st.sampled_from(["none"] * 9 + ["short", "3d", "rank-5"]))
    if lie == "short":
        body = body[: -draw(st.integers(1, 3))]
    elif lie == "3d":
        shape = shape[1:]  # (C, h, w): the remote protocol accepts one item unbatched
    elif lie == "rank-5":
        shape = [1, *shape]
    return shape, dtype, body


def decode_tensors(operation: Any) -> st.SearchStrategy[Any]:
    """/decode with a raw latent or index tensor and a scaling factor."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        if draw(st.booleans()):
            shape, dtype, body = draw(raw_tensor(D, ["float16", "bfloat16", "float32"]))
        else:  # index maps, in and out of the codebook
            shape = [draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))]
            dtype = draw(st.sampled_from(["int16", "int32", "int64"]))
            high = draw(st.sampled_from([CODEBOOK, CODEBOOK, CODEBOOK + 5]))
            values = np.random.default_rng(draw(st.integers(0, 2**16))).integers(
                -1 if high > CODEBOOK else 0, high, math.prod(shape)
            )
            body = values.astype({"int16": "<i2", "int32": "<i4", "int64": "<i8"}[dtype]).tobytes()
        query = {
            "shape": shape,
            "dtype": dtype,
            "scaling_factor": draw(factors),
            "force_not_quantize": draw(st.booleans()),
        }
        accept = draw(st.sampled_from(["tensor/binary", "image/png", "application/json", "*/*"]))
        return operation.Case(
            query={k: v for k, v in query.items() if v is not None},
            body=body,
            media_type=draw(st.sampled_from(["tensor/binary", "application/octet-stream"])),
            headers={"accept": accept},
        )

    return build()


def remote_decode_tensors(operation: Any) -> st.SearchStrategy[Any]:
    """diffusers' `remote_decode`: latents, factors and every reply form."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        shape, dtype, body = draw(raw_tensor(D, ["float16", "bfloat16", "float32"]))
        query = {
            "shape": shape,
            "dtype": dtype,
            "scaling_factor": draw(factors),
            "shift_factor": draw(factors),
            "do_scaling": draw(st.booleans()),
            "output_type": draw(st.sampled_from(["pil", "pt"])),
            "partial_postprocess": draw(st.booleans()),
            "image_format": draw(st.sampled_from(["png", "jpg"])),
        }
        accept = draw(st.sampled_from(["tensor/binary", "image/png", "image/jpeg"]))
        return operation.Case(
            query={k: v for k, v in query.items() if v is not None},
            body=body,
            media_type="tensor/binary",
            headers={"accept": accept},
        )

    return build()


def remote_encode_tensors(operation: Any) -> st.SearchStrategy[Any]:
    """diffusers' `remote_encode`: an image tensor (uint8 or floats) or a PNG, and factors."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        query: dict[str, Any] = {"scaling_factor": draw(factors), "shift_factor": draw(factors)}
        if draw(st.booleans()):
            shape, dtype, body = draw(raw_tensor(3, ["uint8", "float32", "float16"], side=6, multiple=FACTOR))
            query.update(shape=shape, dtype=dtype)
            media = "tensor/binary"
        else:
            body, media = (
                png(draw(st.integers(1, 12)), draw(st.integers(1, 12)), seed=draw(st.integers(0, 99))),
                "image/png",
            )
        return operation.Case(query={k: v for k, v in query.items() if v is not None}, body=body, media_type=media)

    return build()


@st.composite
def v2_tensor(draw: st.DrawFn) -> tuple[dict[str, Any], np.ndarray]:
    """One v2 input: its spec (without data) and its values, mostly fitting the model."""
    name = draw(st.sampled_from(["IMAGE", "INDICES", "LATENTS", "LATENTS"]))
    b, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if name == "IMAGE":
        datatype, shape = "UINT8", [b, FACTOR * h, FACTOR * w, draw(st.sampled_from([3, 3, 1]))]
        values = rng.integers(0, 256, math.prod(shape))
    elif name == "INDICES":
        datatype, shape = draw(st.sampled_from(["INT32", "INT64", "INT16"])), [b, h, w]
        values = rng.integers(0, draw(st.sampled_from([CODEBOOK, CODEBOOK + 3])), math.prod(shape))
    else:
        datatype, shape = draw(st.sampled_from(["FP32", "FP16"])), [b, draw(st.sampled_from([D, D, 2])), h, w]
        values = draw(float_values(math.prod(shape)))
        values[~np.isfinite(values)] = 1e38  # JSON has no NaN or inf; FP16 turns 1e38 into inf
    return {"name": name, "datatype": datatype, "shape": shape}, values


DTYPES = {"UINT8": "u1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4"}
OUTPUT_NAMES = ["IMAGE", "INDICES", "LATENTS", "OTHER"]
OUTPUTS_FOR = {"IMAGE": ["INDICES", "LATENTS"], "INDICES": ["IMAGE"], "LATENTS": ["IMAGE"]}


def v2_requests(operation: Any) -> st.SearchStrategy[Any]:
    """v2 inference requests the protocol allows: JSON data (flat or nested) or the binary-data extension,
    outputs (some that the input does not produce), parameters with extreme scaling factors."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        spec, values = draw(v2_tensor())
        parameters: dict[str, Any] = {}
        if (scale := draw(json_factors)) is not None:
            parameters["scaling_factor"] = scale
        if draw(st.booleans()):
            parameters["force_not_quantize"] = draw(st.booleans())
        names = OUTPUTS_FOR[spec["name"]] if draw(st.integers(0, 3)) else OUTPUT_NAMES  # mostly ones it produces
        outputs = [
            {"name": name, "parameters": {"binary_data": draw(st.booleans())}}
            for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
        ]
        request: dict[str, Any] = {"inputs": [spec], "id": "fuzz"}
        if parameters:
            request["parameters"] = parameters
        if outputs:
            request["outputs"] = outputs
        path = {"name": "default"}
        if "version" in operation.path:
            path["version"] = draw(st.sampled_from(["1", "1", "2"]))
        if not draw(st.booleans()):  # JSON data, flat or nested
            data = values.reshape(spec["shape"]) if draw(st.booleans()) else values
            spec["data"] = data.tolist()
            return operation.Case(path_parameters=path, body=request, media_type="application/json")
        with np.errstate(over="ignore"):
            blob = values.astype(DTYPES[spec["datatype"]]).tobytes()
        spec["parameters"] = {"binary_data_size": len(blob)}
        head = orjson.dumps(request)
        return operation.Case(
            path_parameters=path,
            body=head + blob,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(head))},
        )

    return build()


STRUCTURED: dict[str, Callable[[Any], st.SearchStrategy[Any]]] = {
    "POST /decode": decode_tensors,
    "POST /remote/decode": remote_decode_tensors,
    "POST /remote/encode": remote_encode_tensors,
    "POST /v2/models/{name}/infer": v2_requests,
    "POST /v2/models/{name}/versions/{version}/infer": v2_requests,
}


@pytest.fixture(scope="module")
def fuzz_server(tiny_64ch_checkpoint: Path) -> Iterator[Server]:
    with serve_in_thread(tiny_64ch_checkpoint, max_body_bytes=1_000_000, max_pixels=65_536) as server:
        yield server


def header(response: Any, name: str) -> str:
    """A header of schemathesis' response (a dict of lists, named as the server sent them)."""
    values = next((v for k, v in response.headers.items() if k.lower() == name), [""])
    return str(values[0]) if values else ""


F32 = np.finfo(np.float32)


def usable_factor(value: object, divisor: bool) -> bool:
    """The reference for a latent factor a 2xx may carry: finite in float32, and a scale neither 0 nor
    subnormal (what is not a number at all never reaches a 2xx: the schema refuses it)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return True
    if not math.isfinite(number) or abs(number) > F32.max:
        return False
    return not divisor or abs(number) >= F32.tiny


def factors_sent(case: Any) -> dict[str, Any]:
    """scaling_factor and shift_factor as the case sends them: in the query, or in the v2 request's parameters."""
    sent = {k: v for k, v in (case.query or {}).items() if k in ("scaling_factor", "shift_factor")}
    body = case.body
    if isinstance(body, bytes) and "Inference-Header-Content-Length" in (case.headers or {}):
        try:
            body = orjson.loads(body[: int(case.headers["Inference-Header-Content-Length"])])
        except (ValueError, orjson.JSONDecodeError):
            body = None
    if isinstance(body, dict) and isinstance(body.get("parameters"), dict):
        if "scaling_factor" in body["parameters"]:
            sent["scaling_factor"] = body["parameters"]["scaling_factor"]
    return sent


def check_reply(label: str, case: Any, response: Any) -> None:
    """The property's own half: no 5xx, errors in the documented shape; a 2xx only for usable latent factors,
    and its float tensors all finite."""
    status = response.status_code
    assert status < 500, f"{label}: {status} {response.text[:300]}"
    if status >= 400:
        assert header(response, "content-type").startswith("application/json"), (label, status)
        error = response.json()["error"]
        if label.split(" ")[1].startswith("/v2/") and isinstance(error, str):
            assert error, label  # the protocol's shape
            return
        # the service's shape (inside /v2 only where the body guard answers first: 408, 413)
        assert not label.split(" ")[1].startswith("/v2/") or status in (408, 413), (label, error)
        assert set(error) == {"code", "message"}, (label, error)
        assert error["code"] in CODES_FOR_STATUS.get(status, {"bad_request"}), (label, status, error)
        return
    for name, value in factors_sent(case).items():
        assert usable_factor(value, divisor=name == "scaling_factor"), f"{label}: a {status} for {name}={value!r}"
    dtype = header(response, "dtype")
    if dtype in ("float32", "float16", "bfloat16"):
        raw = np.frombuffer(response.content, dtype="<u2" if dtype == "bfloat16" else dtype)
        floats = (raw.astype("<u4") << 16).view("<f4") if dtype == "bfloat16" else raw
        assert np.isfinite(floats).all(), f"{label}: a 200 with non-finite {dtype} values"


@pytest.fixture(scope="module")
def prior_fuzz_server(tiny_prior_checkpoint: Path) -> Iterator[Server]:
    """The tiny model (the same codebook, factor and embedding size) with a random prior: /generate, /complete and
    return_nll reach the sampling code instead of answering 422 no_prior."""
    with serve_in_thread(tiny_prior_checkpoint, max_body_bytes=1_000_000, max_pixels=65_536) as server:
        yield server


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_never_fails_and_conforms(fuzz_server: Server, label: str) -> None:
    fuzz_operation(fuzz_server, label)


@pytest.mark.parametrize("label", ["POST /complete", "POST /encode", "POST /generate"])
def test_sampling_never_fails_and_conforms(prior_fuzz_server: Server, label: str) -> None:
    fuzz_operation(prior_fuzz_server, label)


def fuzz_operation(server: Server, label: str) -> None:
    fuzz_server = server
    operation = OPERATIONS[label]
    strategies = [
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    ]
    if label in STRUCTURED:  # half of the examples: coherent tensor requests
        strategies += [STRUCTURED[label](operation)] * 2

    @given(case=st.one_of(*strategies))
    @settings(
        max_examples=2 * MAX_EXAMPLES,  # shared by the strategies: the CI run stays ~1000 requests
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=fuzz_server.url, timeout=30)
        check_reply(label, case, response)
        case.validate_response(
            response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
        )

    fuzz()


def test_every_operation_is_fuzzed() -> None:
    """The fuzzed operations are every method and path the app routes into its schema (GET / and the static
    files are left out of the schema; HEAD answers as GET: tests/reliability/test_head.py)."""
    routed = {
        f"{method} {path}"
        for route, path in routes_with_paths(create_app(Settings(warmup=False)).routes)
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods
        if method != "HEAD"
    }
    assert set(OPERATIONS) == routed
    assert {"POST /encode", "POST /decode", "POST /reconstruct", "POST /generate", "POST /complete"} <= routed
    assert set(STRUCTURED) <= set(OPERATIONS)


def test_tensor_bodies_are_sent_as_their_bytes(fuzz_server: Server) -> None:
    """A generated `tensor/binary` body reaches the server as the bytes generated for it (it arrived empty
    before), and a coherent tensor request is served."""
    operation = OPERATIONS["POST /decode"]
    latents = np.zeros((1, D, 2, 2), "<f4").tobytes()
    case = operation.Case(
        query={"shape": [1, D, 2, 2], "dtype": "float32"},
        body=latents,
        media_type="tensor/binary",
        headers={"accept": "tensor/binary"},
    )
    assert case.call(base_url=fuzz_server.url, timeout=30).status_code == 200
    strategy = operation.as_strategy(schemathesis.GenerationMode.POSITIVE)
    sent: list[bytes] = []

    @given(case=strategy)
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def collect(case: schemathesis.Case) -> None:
        if case.media_type == "tensor/binary":
            prepared = case.as_transport_kwargs(base_url=fuzz_server.url)
            sent.append(prepared.get("data") or b"")

    collect()
    assert sent, "no tensor/binary body was generated"
    assert any(len(body) > 0 for body in sent), "every generated tensor/binary body was sent empty"


def test_a_bad_inference_header_length_is_the_protocols_400(fuzz_server: Server) -> None:
    """A header that is not a byte count is a malformed v2 request: the protocol's 400, `{"error": "<message>"}`
    (FastAPI's 422 in the REST shape before)."""
    reply = requests.post(
        f"{fuzz_server.url}/v2/models/default/infer",
        data=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "x"},
        timeout=30,
    )
    assert reply.status_code == 400
    assert isinstance(reply.json()["error"], str)
