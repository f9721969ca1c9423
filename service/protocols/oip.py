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
(`Inference-Header-Content-Length`, `binary_data_size`, `binary_data` / `binary_data_output`). Errors inside
/v2 answer the protocol's `{"error": "<message>"}`. Compute goes through the batcher like every other route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch

from ..errors import ServiceError
from ..facts import ModelFacts
from ..inputs import check_count, check_decode_limits, decode_from_array, images_from_array
from ..ops import Encoded, LatentDecode, Op

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
    parameters: dict[str, Any]


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
def parse_request(body: bytes, header_length: int | None) -> InferRequest:
    """A v2 inference request (JSON, or JSON then binary blobs) -> the one input and the wanted outputs."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise OIPError(
                400,
                f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)}",
            )
        head, blobs = body[:header_length], memoryview(body)[header_length:]
    else:
        head, blobs = body, memoryview(b"")
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise OIPError(400, f"the inference header is not valid JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise OIPError(400, "the request must be a JSON object with an 'inputs' list")
    inputs = request["inputs"]
    if len(inputs) != 1:
        names = [i.get("name") for i in inputs if isinstance(i, dict)]
        raise OIPError(400, f"send exactly one input (IMAGE, INDICES or LATENTS); got {names}")
    tensor, used = _parse_tensor(inputs[0], blobs)
    if used != len(blobs):
        raise OIPError(400, f"the body holds {len(blobs) - used} bytes of binary data no input claims")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise OIPError(400, "'parameters' must be an object")
    binary_default = bool(parameters.get("binary_data_output", False))
    allowed = OUTPUTS_FOR[tensor.name]
    outputs: dict[str, bool] = {}
    for spec in request.get("outputs") or []:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in allowed:
            raise OIPError(
                400,
                f"output {name!r} is not produced from input {tensor.name}; choose from {allowed}",
            )
        wanted = (spec.get("parameters") or {}).get("binary_data", binary_default)
        outputs[name] = bool(wanted)
    if not outputs:
        outputs = dict.fromkeys(DEFAULT_OUTPUTS[tensor.name], binary_default)
    request_id = request.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, tensor, outputs, parameters)


def _parse_tensor(spec: Any, blobs: memoryview) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise OIPError(400, "each input must be an object with name, shape, datatype and data")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if name not in INPUT_TYPES:
        raise OIPError(400, f"unknown input {name!r}; the inputs are IMAGE, INDICES and LATENTS")
    if datatype not in INPUT_TYPES[name]:
        raise OIPError(400, f"input {name} must be {' or '.join(INPUT_TYPES[name])}, got {datatype!r}")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise OIPError(400, f"input {name}: shape must be a list of positive integers, got {shape!r}")
    if len(shape) != len(INPUT_DIMS[name]):
        raise OIPError(400, f"{name} must be [{', '.join(INPUT_DIMS[name])}], got {shape}")
    dtype = DATATYPES[datatype]
    count = int(np.prod(shape))
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or size > len(blobs):
            raise OIPError(
                400,
                f"input {name}: binary_data_size {size} does not match shape {shape} of {datatype}",
            )
        array = np.frombuffer(blobs[:size], dtype=dtype).reshape(shape)
        return Tensor(name, datatype, array.astype(dtype.newbyteorder("="))), int(size)
    if "data" not in spec:
        raise OIPError(400, f"input {name} has neither 'data' nor a binary_data_size")
    try:
        array = np.asarray(spec["data"], dtype=dtype.newbyteorder("="))
    except (ValueError, TypeError, OverflowError) as exc:
        raise OIPError(400, f"input {name}: data is not a {datatype} array: {exc}") from exc
    if array.size != count:
        raise OIPError(400, f"input {name}: {array.size} values do not fill shape {shape}")
    return Tensor(name, datatype, array.reshape(shape)), 0


def to_model_inputs(
    tensor: Tensor, facts: ModelFacts, max_images: int, max_pixels: int
) -> tuple[Op, list[torch.Tensor]]:
    """The op and per-item model inputs, checked by the same payload helpers as /encode and /decode; input
    that does not fit the model answers the protocol's 400 (sizes over the limits stay 413)."""
    try:
        if tensor.name == "IMAGE":
            check_count(len(tensor.array), max_images)
            return Op.ENCODE, [image.tensor for image in images_from_array(tensor.array, facts, max_pixels)]
        decoded = decode_from_array(tensor.array, facts)
        check_decode_limits(decoded, facts, max_images, max_pixels)
        return decoded.op, decoded.tensors
    except ServiceError as exc:
        if exc.kind == "invalid_input":
            raise OIPError(400, exc.message) from exc
        raise


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


def latent_params(parameters: dict[str, Any]) -> LatentDecode:
    force = parameters.get("force_not_quantize", False)
    scale = parameters.get("scaling_factor")
    if not isinstance(force, bool):
        raise OIPError(400, "parameter force_not_quantize must be a boolean")
    if scale is not None and (not isinstance(scale, int | float) or isinstance(scale, bool) or scale == 0):
        raise OIPError(400, "parameter scaling_factor must be a non-zero number")
    return LatentDecode(force, float(scale) if scale is not None else None)


def collect_outputs(op: Op, results: list[Any]) -> dict[str, np.ndarray]:
    """The engine's results as the protocol's named output arrays."""
    if op == Op.ENCODE:
        encoded: list[Encoded] = results
        return {
            "INDICES": torch.stack([r.indices for r in encoded]).to(torch.int32).numpy(),
            "LATENTS": torch.stack([r.latents for r in encoded]).float().numpy(),
        }
    return {"IMAGE": np.stack(results)}
