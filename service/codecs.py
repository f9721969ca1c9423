"""Bytes <-> arrays and tensors: images in and out, base64, raw tensors.

Everything here is CPU work called from the codec thread pool, never on the event loop. Inputs are checked before
any large allocation: image dimensions are read from the header and refused above the pixel limit before the
pixels are decoded; raw tensors must hold exactly the bytes their shape and dtype say. Errors are `ServiceError`s
(4xx); this module never sees a request object and never runs the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from model.pixels import from_uint8

from .errors import ServiceError

# decoders accepted for input images; anything else Pillow knows is refused (smaller attack surface)
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}

TENSOR_DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
INDEX_DTYPES = ("int16", "int32", "int64")
LATENT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class ImageCompression:
    """How output images are compressed (from the settings)."""

    png_compress_level: int = 1
    jpeg_quality: int = 95
    webp_quality: int = 95


# image input
def read_image(data: bytes, *, channels: int, max_pixels: int) -> np.ndarray:
    """Image file bytes -> (H, W, channels) uint8, EXIF-oriented, alpha composited on white."""
    if channels not in (1, 3):
        raise ServiceError("invalid_input", f"the model takes {channels}-channel images; only 1 or 3 are supported")
    try:
        im: Image.Image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ServiceError("image_too_large", f"image refused as a decompression bomb: {exc}") from exc
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ServiceError(
            "invalid_image", f"not a readable image ({', '.join(INPUT_FORMATS)} accepted): {exc}"
        ) from exc
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ServiceError(
                "image_too_large", f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
            )
        if width == 0 or height == 0:
            raise ServiceError("invalid_image", "image has no pixels")
        try:
            im.seek(0)  # first frame of animations
            im.load()
            im = ImageOps.exif_transpose(im)
            im = _to_mode(im, "RGB" if channels == 3 else "L")
        except ServiceError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ServiceError("invalid_image", f"image could not be decoded (truncated or corrupt?): {exc}") from exc
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _to_mode(im: Image.Image, target: str) -> Image.Image:
    """Any Pillow mode -> `target` (RGB or L): high bit depths scaled, not clipped; alpha over white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = _high_depth_to_l(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (im.mode in ("RGB", "L") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        im = background
    return im if im.mode == target else im.convert(target)


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    arr = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        arr = arr / 257.0  # 0..65535 -> 0..255
    elif im.mode == "I":
        arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
    else:  # "F": 0..1 floats or already 0..255
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")


def pad_to_multiple(arr: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) -> (H', W', C) with H', W' the next multiples of `factor`, by edge replication."""
    height, width = arr.shape[:2]
    pad_h, pad_w = -height % factor, -width % factor
    if pad_h == 0 and pad_w == 0:
        return arr
    return np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def to_model_input(arr: np.ndarray, factor: int) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, H', W') float32 in [-1, 1], padded to the downsample factor."""
    padded = pad_to_multiple(arr, factor)
    if not (padded.flags.c_contiguous and padded.flags.writeable):  # Pillow hands out read-only arrays
        padded = np.array(padded, order="C")
    return from_uint8(torch.from_numpy(padded).permute(2, 0, 1))  # diffusers' float ops: indices match its pipelines


# image output
def write_image(arr: np.ndarray, fmt: str, options: ImageCompression) -> bytes:
    """(H, W, C) uint8 with C in 1, 3, 4 -> PNG, JPEG or WebP bytes."""
    pil_format = OUTPUT_FORMATS[fmt]
    channels = arr.shape[2]
    if channels == 1:
        im = Image.fromarray(arr[:, :, 0], "L")
    elif channels in (3, 4):
        im = Image.fromarray(np.ascontiguousarray(arr), "RGB" if channels == 3 else "RGBA")
    else:
        raise ServiceError("not_acceptable", f"{channels}-channel output cannot be an image; ask for tensor/binary")
    if pil_format == "JPEG" and im.mode == "RGBA":
        im = im.convert("RGB")
    out = io.BytesIO()
    if pil_format == "PNG":
        im.save(out, "PNG", compress_level=options.png_compress_level)
    elif pil_format == "JPEG":
        im.save(out, "JPEG", quality=options.jpeg_quality)
    else:
        im.save(out, "WEBP", quality=options.webp_quality)
    return out.getvalue()


# base64
def b64decode(text: str, what: str) -> bytes:
    """Standard base64 (whitespace and a `data:...;base64,` prefix tolerated) -> bytes, or a 400."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceError("invalid_base64", f"{what} is not valid base64: {exc}") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# raw tensors
def read_tensor(data: bytes, shape: list[int], dtype: str) -> torch.Tensor:
    """Little-endian C-order bytes -> a tensor of `shape` and `dtype`, or a 422 naming the mismatch."""
    if dtype not in TENSOR_DTYPES:
        raise ServiceError("invalid_input", f"dtype {dtype!r} is not one of {sorted(TENSOR_DTYPES)}")
    if not shape or any(d <= 0 for d in shape):
        raise ServiceError("invalid_input", f"shape must be positive sizes, got {shape}")
    torch_dtype = TENSOR_DTYPES[dtype]
    expected = math.prod(shape) * torch_dtype.itemsize
    if len(data) != expected:
        raise ServiceError("invalid_input", f"body has {len(data)} bytes but shape {shape} of {dtype} needs {expected}")
    return torch.frombuffer(bytearray(data), dtype=torch_dtype).reshape(shape)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A CPU tensor -> its little-endian C-order bytes."""
    return tensor.contiguous().numpy().tobytes() if tensor.dtype != torch.bfloat16 else _bf16_bytes(tensor)


def _bf16_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.int16).numpy().tobytes()
