"""The Open Inference Protocol's wire format (KServe v2, Triton's HTTP API): requests -> model inputs, and
outputs -> replies, so that KServe, Triton clients (`tritonclient.http`) and anything else speaking v2 can
encode and decode without a custom client. The routes are `routes/oip.py`; this is CPU work for the codec pool.

Each served model is one v2 model with named tensors (send exactly one input per request):
- input `IMAGE` UINT8 [B, H, W, C] -> outputs `INDICES` INT32 [B, h, w] (default) and `LATENTS` FP32
  [B, D, h, w] (latents before quantization, on request). Sides that are not multiples of the downsample
  factor are padded by edge replication, as /encode does.
- input `INDICES` INT32 [B, h, w] or `LATENTS` FP32 [B, D, h, w] -> output `IMAGE` UINT8 [B, H, W, C].
  Request parameters `force_not_quantize` (bool) and `scaling_factor` (float) apply to `LATENTS`.
Tensors travel as JSON `data` (row-major, flat or nested) or with the binary-data extension
(`Inference-Header-Content-Length`, `binary_data_size`, `binary_data` / `binary_data_output`). A request is
validated whole against pydantic models of the protocol's InferenceRequest (`schemas.py`, the approach of
KServe's own server) before any field is read, and shapes are bounded by the body before they are multiplied:
every malformed request answers 400; input that is well formed but does not fit the model (indices outside the
codebook, shapes the model cannot take, non-finite latents) answers 422, as on /decode and /encode (one status per
error kind, `errors.py`). Errors inside /v2 answer the protocol's `{"error": "<message>"}`. Compute
goes through the batcher like every other route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from pydantic import ValidationError

from ..errors import validation_message
from ..facts import ModelFacts
from ..inputs import check_count, check_decode_limits, decode_from_array, images_from_array, latent_factors
from ..ops import Encoded, LatentDecode, Op
from ..schemas import InferenceRequest, InferInputTensor, InferRequestParameters

VERSION = "1"
DATATYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype("<u1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
}
INPUT_TYPES = {"IMAGE": ("UINT8",), "INDICES": ("INT32", "INT64", "INT16"), "LATENTS": ("FP32", "FP16")}
INPUT_DIMS = {"IMAGE": ("B", "H", "W", "C"), "INDICES": ("B", "h", "w"), "LATENTS": ("B", "D", "h", "w")}
OUTPUTS_FOR = {"IMAGE": ("INDICES", "LATENTS"), "INDICES": ("IMAGE",), "LATENTS": ("IMAGE",)}
DEFAULT_OUTPUTS = {"IMAGE": ("INDICES",), "INDICES": ("IMAGE",), "LATENTS": ("IMAGE",)}


class OIPError(Exception):
    """A protocol error: `{"error": message}` with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    tensor: Tensor
    outputs: dict[str, bool]  # requested output -> binary
    parameters: InferRequestParameters


# metadata
def model_metadata(facts: ModelFacts) -> dict[str, Any]:
    config = facts.config
    c, d = config.in_channels, config.embed_dim
    return {
        "name": facts.name,
        "versions": [VERSION],
        "platform": "pytorch",
        "inputs": [
            {"name": "IMAGE", "datatype": "UINT8", "shape": [-1, -1, -1, c]},
            {"name": "INDICES", "datatype": "INT32", "shape": [-1, -1, -1]},
            {"name": "LATENTS", "datatype": "FP32", "shape": [-1, d, -1, -1]},
        ],
        "outputs": [
            {"name": "INDICES", "datatype": "INT32", "shape": [-1, -1, -1]},
            {"name": "LATENTS", "datatype": "FP32", "shape": [-1, d, -1, -1]},
            {"name": "IMAGE", "datatype": "UINT8", "shape": [-1, -1, -1, config.out_channels]},
        ],
        "parameters": {
            "codebook_size": config.codebook_size,
            "downsample_factor": config.downsample_factor,
        },
    }


def check_version(version: str | None) -> None:
    if version is not None and version != VERSION:
        raise OIPError(404, f"model version {version!r} not found; the only version is {VERSION!r}")


# request parsing (codec pool)
def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """A v2 inference request (JSON, or JSON then binary blobs), validated whole against the protocol's models
    (`schemas.InferenceRequest`) before any field is read -> the one input and the wanted outputs. Anything
    malformed is the protocol's 400."""
    length = _header_length(header_length)
    if length is not None:
        if not 0 < length <= len(body):
            raise OIPError(400, f"Inference-Header-Content-Length {length} does not fit a body of {len(body)}")
        head, blobs = body[:length], memoryview(body)[length:]
    else:
        head, blobs = body, memoryview(b"")
    try:
        raw = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise OIPError(400, f"the inference header is not valid JSON: {exc}") from exc
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        message = validation_message(exc.errors())
        raise OIPError(400, f"the request is not a v2 inference request: {message}") from exc
    if len(request.inputs) != 1:
        names = [i.name for i in request.inputs]
        raise OIPError(400, f"send exactly one input (IMAGE, INDICES or LATENTS); got {names}")
    tensor, used = _parse_tensor(request.inputs[0], blobs, len(body))
    if used != len(blobs):
        raise OIPError(400, f"the body holds {len(blobs) - used} bytes of binary data no input claims")
    parameters = request.parameters or InferRequestParameters()
    allowed = OUTPUTS_FOR[tensor.name]
    outputs: dict[str, bool] = {}
    for spec in request.outputs or []:
        if spec.name not in allowed:
            raise OIPError(
                400,
                f"output {spec.name!r} is not produced from input {tensor.name}; choose from {allowed}",
            )
        binary = spec.parameters.binary_data if spec.parameters is not None else None
        outputs[spec.name] = parameters.binary_data_output if binary is None else binary
    if not outputs:
        outputs = dict.fromkeys(DEFAULT_OUTPUTS[tensor.name], parameters.binary_data_output)
    return InferRequest(request.id, tensor, outputs, parameters)


def _header_length(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.strip().isascii() or not text.strip().isdigit():
        raise OIPError(400, f"Inference-Header-Content-Length must be a byte count, got {text[:40]!r}")
    return int(text.strip())


def _parse_tensor(spec: InferInputTensor, blobs: memoryview, body_size: int) -> tuple[Tensor, int]:
    name, datatype, shape = spec.name, spec.datatype, spec.shape
    if name not in INPUT_TYPES:
        raise OIPError(400, f"unknown input {name!r}; the inputs are IMAGE, INDICES and LATENTS")
    if datatype not in INPUT_TYPES[name]:
        raise OIPError(400, f"input {name} must be {' or '.join(INPUT_TYPES[name])}, got {datatype!r}")
    if len(shape) != len(INPUT_DIMS[name]):
        raise OIPError(400, f"{name} must be [{', '.join(INPUT_DIMS[name])}], got {shape}")
    # bounded before multiplying (Python ints, never int64): every value takes at least a byte of the body
    if any(d > body_size for d in shape) or math.prod(shape) > body_size:
        raise OIPError(
            400, f"input {name}: shape {shape} asks for more values than a body of {body_size} bytes can carry"
        )
    count = math.prod(shape)
    dtype = DATATYPES[datatype]
    size = spec.parameters.binary_data_size if spec.parameters is not None else None
    if size is not None:
        if spec.data is not None:
            raise OIPError(400, f"input {name} has both 'data' and a binary_data_size; send one")
        if size != count * dtype.itemsize or size > len(blobs):
            raise OIPError(
                400,
                f"input {name}: binary_data_size {size} does not match shape {shape} of {datatype}",
            )
        array = np.frombuffer(blobs[:size], dtype=dtype).reshape(shape)
        return Tensor(name, datatype, array.astype(dtype.newbyteorder("="))), size
    if spec.data is None:
        raise OIPError(400, f"input {name} has neither 'data' nor a binary_data_size")
    return Tensor(name, datatype, _json_array(name, datatype, spec.data, shape, count)), 0


def _json_array(name: str, datatype: str, data: list[Any], shape: list[int], count: int) -> np.ndarray:
    """JSON `data` (flat or nested, row-major) -> an array of `datatype`: numbers only (integers for integer
    types), within the type's range."""
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise OIPError(400, f"input {name}: data is not a rectangular array of numbers: {exc}") from exc
    if values.size != count:
        raise OIPError(400, f"input {name}: {values.size} values do not fill shape {shape}")
    dtype = DATATYPES[datatype]
    integer = dtype.kind in "iu"
    if values.dtype.kind not in ("iu" if integer else "iuf"):
        kind = "integers" if integer else "numbers"
        raise OIPError(400, f"input {name}: data must be {kind} ({datatype}), got values of type {values.dtype}")
    if integer and values.size:
        info = np.iinfo(dtype)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise OIPError(400, f"input {name}: values in [{low}, {high}] do not fit {datatype}")
    with np.errstate(over="ignore"):  # a float out of FP16's range becomes inf: refused as non-finite latents
        return values.astype(dtype.newbyteorder("=")).reshape(shape)


def to_model_inputs(
    request: InferRequest, facts: ModelFacts, max_images: int, max_pixels: int
) -> tuple[Op, list[torch.Tensor], LatentDecode | None]:
    """The op, per-item model inputs and op parameters, checked by the same input path as /encode and /decode
    (the `scaling_factor` parameter included), so that they answer the same statuses: input that does not fit
    the model 422, sizes over the limits 413."""
    tensor = request.tensor
    factors = latent_factors(request.parameters.scaling_factor)
    if tensor.name == "IMAGE":
        check_count(len(tensor.array), max_images)
        images = images_from_array(tensor.array, facts, max_pixels)
        return Op.ENCODE, [image.tensor for image in images], None
    decoded = decode_from_array(tensor.array, facts, factors)  # latents / scaling_factor, checked
    check_decode_limits(decoded, facts, max_images, max_pixels)
    if decoded.op == Op.DECODE_LATENTS:
        return decoded.op, decoded.tensors, LatentDecode(request.parameters.force_not_quantize)
    return decoded.op, decoded.tensors, None


def build_response(
    model: str,
    request: InferRequest,
    arrays: dict[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        arr = arrays[name]
        datatype = {"INDICES": "INT32", "LATENTS": "FP32", "IMAGE": "UINT8"}[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = np.ascontiguousarray(arr, dtype=DATATYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": VERSION, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    head = orjson.dumps(body)
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)


def collect_outputs(op: Op, results: list[Any]) -> dict[str, np.ndarray]:
    """The engine's results as the protocol's named output arrays."""
    if op == Op.ENCODE:
        encoded: list[Encoded] = results
        return {
            "INDICES": torch.stack([r.indices for r in encoded]).to(torch.int32).numpy(),
            "LATENTS": torch.stack([r.latents for r in encoded]).float().numpy(),
        }
    return {"IMAGE": np.stack(results)}
