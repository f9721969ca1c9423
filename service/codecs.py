"""Bytes <-> arrays and tensors: images in and out, base64, raw tensors.

Everything here is CPU work called from the codec thread pool, never on the event loop. Inputs are checked before
any large allocation: image dimensions are read from the header and refused above the pixel limit before the
pixels are decoded; an image's first frame is decoded in full from the file's own bytes or refused (a file cut
short or with its size fields edited is a 400, never pixels a library made up, and where the format tells, it is
refused before its frame is allocated); raw tensors must hold exactly the bytes their shape and dtype say. Errors
are `ServiceError`s (4xx) whose messages are sentences naming the format and the problem; this module never sees
a request object and never runs the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageFile, ImageOps

from model.pixels import from_uint8

from .errors import ServiceError

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
    """Image file bytes -> (H, W, channels) uint8, EXIF-oriented, alpha composited on white.

    The first frame is decoded in full from the file's own bytes, or refused: a file whose pixel data ends before
    the frame its header declares (cut short, or its size fields edited) is a 400, never pixels a library made up.
    """
    if channels not in (1, 3):
        raise ServiceError("invalid_input", f"the model takes {channels}-channel images; only 1 or 3 are supported")
    im = _open(data, max_pixels)
    with im:
        fmt = _format_of(im)
        width, height = im.size
        if width * height > max_pixels:
            raise ServiceError(
                "image_too_large",
                f"the {_NAMES[fmt]} image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            )
        if width == 0 or height == 0:
            raise ServiceError("invalid_image", f"the {_NAMES[fmt]} image declares a size of {width}x{height}")
        try:
            im.seek(0)  # first frame of animations
            decoded = _DECODERS[fmt](im, data)
        except ServiceError:
            raise
        except _DECODE_ERRORS as exc:
            raise ServiceError("invalid_image", _decode_failure(fmt, im.size, exc)) from exc
        try:
            decoded = ImageOps.exif_transpose(decoded)
            decoded = _to_mode(decoded, "RGB" if channels == 3 else "L")
        except _DECODE_ERRORS as exc:
            raise ServiceError(
                "invalid_image", f"the {_NAMES[fmt]} image's pixels ({decoded.mode}) could not be converted"
            ) from exc
    arr = np.asarray(decoded, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


# what a damaged file makes Pillow and the libraries raise (Pillow's parsers also raise the others on hostile bytes)
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)
_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF"}
_MAGIC = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Pillow's parse of the header (no pixels yet), or a 400 naming the format the file claims to be."""
    accepted = ", ".join(_NAMES[f] for f in INPUT_FORMATS)
    try:
        im = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ServiceError(
            "image_too_large",
            f"the {_NAMES.get(_sniff(data) or '', 'image')} file declares more than {Image.MAX_IMAGE_PIXELS} pixels "
            f"(a decompression bomb); the limit is {max_pixels}",
        ) from exc
    except (Image.UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        claimed = _sniff(data)
        if claimed is None:
            message = f"the file is not an image this service reads ({accepted} are accepted)"
        else:
            message = f"the file starts like a {_NAMES[claimed]} image, but its header is cut short or corrupt"
        raise ServiceError("invalid_image", message) from exc
    assert isinstance(im, ImageFile.ImageFile)
    return im


def _sniff(data: bytes) -> str | None:
    """The accepted format whose signature the file starts with, for messages about files Pillow cannot open."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def _format_of(im: Image.Image) -> str:
    return "JPEG" if im.format == "MPO" else str(im.format)  # MPO: JPEGs with more frames; the first is a JPEG


def _decode_failure(fmt: str, size: tuple[int, int], exc: BaseException) -> str:
    """A sentence for a decoder's failure; the library's own words stay in the exception chain (and the log)."""
    name, frame = _NAMES[fmt], f"{size[0]}x{size[1]}"
    if isinstance(exc, OSError) and str(exc).startswith("image file is truncated"):
        return f"the {name} file is cut short: its pixel data ends before the {frame} frame its header declares"
    return f"the {name} file is corrupt: the pixel data of its {frame} frame could not be decoded"


class _Incomplete(ServiceError):
    def __init__(self, fmt: str, size: tuple[int, int], problem: str) -> None:
        super().__init__(
            "invalid_image", f"the {_NAMES[fmt]} file's {problem} the {size[0]}x{size[1]} frame its header declares"
        )


# How each accepted format's first frame is decoded in full. Pillow refuses a file that ends before a decoder has
# the bytes it asks for (ImageFile.LOAD_TRUNCATED_IMAGES stays False). Two libraries instead make up what is
# missing, and Pillow passes that on: libjpeg fills the frame with grey when its compressed data ends early (a
# warning Pillow silences), and Pillow's zlib decoder stops at the end of the stream with the remaining rows
# black; a TIFF's strips or tiles may also not cover its frame, which leaves rows black. Those three formats are
# decoded here so that the frame must be filled by the data, and the check runs before the frame is allocated.
def _decode_pillow(im: ImageFile.ImageFile, data: bytes) -> Image.Image:
    """WebP, BMP, GIF: libwebp and Pillow's BMP and GIF decoders refuse data that ends before their frame."""
    im.load()
    return im


def _decode_jpeg(im: ImageFile.ImageFile, data: bytes) -> Image.Image:
    """libjpeg-turbo in strict mode: any warning (compressed data ending before the frame, or data left over
    after it, as a cut or size-edited file gives) refuses the file. Same pixels as Pillow's decode of a valid
    JPEG: the same library with the same settings (accurate DCT, fancy upsampling)."""
    _check_jpeg_scans(data, im.size)
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ServiceError("invalid_image", "the JPEG file's header is cut short or corrupt") from exc
    if (width, height) != im.size:
        raise ServiceError(
            "invalid_image", f"the JPEG file declares two sizes, {width}x{height} and {im.size[0]}x{im.size[1]}"
        )
    rawmode = im.tile[0].args[0] if im.tile and isinstance(im.tile[0].args, tuple) else im.mode
    colorspace = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}.get(im.mode)
    if colorspace is None:
        raise ServiceError("invalid_image", f"the JPEG file's color space ({im.mode}) is not supported")
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
    except ValueError as exc:
        reason = str(exc).lower()
        if "premature end" in reason:
            raise _Incomplete("JPEG", im.size, "compressed data ends before") from exc
        if "extraneous" in reason:
            raise _Incomplete("JPEG", im.size, "compressed data holds more than") from exc
        raise ServiceError(
            "invalid_image", "the JPEG file is corrupt: its compressed data could not be decoded"
        ) from exc
    if rawmode == "CMYK;I":
        arr = 255 - arr  # Adobe's inverted CMYK, as Pillow reads it
    decoded = Image.fromarray(arr[:, :, 0] if im.mode == "L" else arr, im.mode)
    decoded.info.update(im.info)  # EXIF and XMP, for the orientation
    return decoded


# a JPEG's frame and scans, read from its markers before any pixel is decoded
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_HUFFMAN = frozenset({0xC0, 0xC1, 0xC2})  # DCT frames whose every coded block costs at least one bit of its scan
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_LOSSLESS = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_MARKER_AFTER_SCAN = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")  # not a stuffed 0x00, a restart marker or fill
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI


def _check_jpeg_scans(data: bytes, size: tuple[int, int]) -> None:
    """Refuse a JPEG whose scans cannot fill its frame, before any of it is allocated: a Huffman-coded scan that
    holds DC coefficients spends at least one bit on every block, so a scan shorter than that is cut short (or its
    frame's size edited); and every component's coefficients must all be coded, to full precision, by the scans
    (a progressive file cut at a scan boundary otherwise decodes, coarser or with a component grey). A structure
    this walk does not follow is left to libjpeg's strict decode."""
    code, sampling, scans = _jpeg_structure(data)
    if not sampling or not scans:
        return
    if len(scans) > _MAX_JPEG_SCANS:
        raise ServiceError("invalid_image", f"the JPEG file has more than {_MAX_JPEG_SCANS} scans")
    width, height = size
    h_max, v_max = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())

    def blocks(components: list[int]) -> int:
        if len(components) > 1:  # interleaved: whole MCUs
            mcus = _ceil_div(width, 8 * h_max) * _ceil_div(height, 8 * v_max)
            return mcus * sum(sampling[c][0] * sampling[c][1] for c in components if c in sampling)
        h, v = sampling.get(components[0], (h_max, v_max))
        return _ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)

    if code in _HUFFMAN:
        for components, ss, _, _, _, length in scans:
            if ss == 0 and blocks(components) > 8 * length:
                raise _Incomplete("JPEG", size, "compressed data ends before")
    if code in _LOSSLESS:
        return
    # per component and coefficient: first coded (a scan with Ah = 0), and the lowest bit position reached
    first = {c: [code not in _PROGRESSIVE] * 64 for c in sampling}
    lowest = {c: [0 if code not in _PROGRESSIVE else 14] * 64 for c in sampling}
    coded = set()
    for components, ss, se, ah, al, _ in scans:
        for c in components:
            if c in sampling:
                coded.add(c)
                for k in range(ss, min(se, 63) + 1):
                    first[c][k] = first[c][k] or ah == 0
                    lowest[c][k] = min(lowest[c][k], al)
    if coded != set(sampling) or not all(all(first[c]) and not any(lowest[c]) for c in sampling):
        raise _Incomplete("JPEG", size, "scans do not code every coefficient of")


_MAX_JPEG_SCANS = 1000  # progressive files have about 10; thousands of scans only cost decode time


_Scan = tuple[list[int], int, int, int, int, int]  # components, Ss, Se, Ah, Al, bytes of coded data


def _jpeg_structure(data: bytes) -> tuple[int, dict[int, tuple[int, int]], list[_Scan]]:
    """(SOF marker, {component: (h, v) sampling}, scans), read from the markers up to EOI; an empty frame where
    the walk meets what it does not follow."""
    code, pos = 0, 2
    sampling: dict[int, tuple[int, int]] = {}
    scans: list[_Scan] = []
    while pos + 4 <= len(data) and data[pos] == 0xFF and len(scans) <= _MAX_JPEG_SCANS:
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            break
        if marker == 0xFF or marker in _STANDALONE:  # fill byte, or a marker without a segment
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return 0, {}, []
        pos += 2 + length
        if marker in _SOF and not sampling:
            count = segment[5] if len(segment) >= 6 else 0
            if count == 0 or len(segment) < 6 + 3 * count:
                return 0, {}, []
            code = marker
            sampling = {segment[6 + 3 * i]: divmod(segment[7 + 3 * i], 16) for i in range(count)}
            if not all(h and v for h, v in sampling.values()):
                return 0, {}, []
        elif marker == 0xDA and sampling:
            count = segment[0] if segment else 0
            if count == 0 or len(segment) < 4 + 2 * count:
                return 0, {}, []
            ss, se, approximation = segment[1 + 2 * count : 4 + 2 * count]
            after = _MARKER_AFTER_SCAN.search(data, pos)
            end = after.start() if after else len(data)
            components = list(segment[1 : 1 + 2 * count : 2])
            scans.append((components, ss, se, approximation >> 4, approximation & 15, end - pos))
            pos = end
    return code, sampling, scans


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_INFLATE_STEP = 1 << 20  # bytes of inflated rows held at once while counting them


def _decode_png(im: ImageFile.ImageFile, data: bytes) -> Image.Image:
    """The IDAT chunks (their CRCs checked) must inflate to exactly the filtered rows the header declares, no
    fewer (Pillow would leave the rest black) and no more; counted in steps, so a lying header costs no memory."""
    view = memoryview(data)
    header, idat, pos = b"", [], 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > len(data):
            break
        body = view[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = bytes(body)
        elif kind == b"IDAT":
            if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, pos + 8 + length)[0]:
                raise ServiceError("invalid_image", "the PNG file is corrupt: an IDAT chunk's checksum does not match")
            idat.append(body)
        elif idat:
            break  # the IDAT chunks are consecutive: the first frame's data is complete
        pos += 12 + length
    if len(header) != 13:
        raise ServiceError("invalid_image", "the PNG file is corrupt: its IHDR header chunk is missing or malformed")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    bits = depth * _PNG_CHANNELS.get(color, 1)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        cols, rows = _ceil_div(width - x0, dx), _ceil_div(height - y0, dy)
        if cols > 0 and rows > 0:
            expected += rows * (1 + (cols * bits + 7) // 8)
    inflater, produced = zlib.decompressobj(), 0
    try:
        for body in idat:
            pending: bytes | memoryview = body
            while pending and not inflater.eof:
                produced += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
                if produced > expected:
                    raise _Incomplete("PNG", im.size, "pixel data holds more rows than")
        while not inflater.eof and produced <= expected:
            step = len(inflater.decompress(b"", _INFLATE_STEP))
            if step == 0:
                break
            produced += step
    except zlib.error as exc:
        raise ServiceError("invalid_image", "the PNG file is corrupt: its compressed pixel data is not valid") from exc
    if produced > expected:
        raise _Incomplete("PNG", im.size, "pixel data holds more rows than")
    if produced < expected or not inflater.eof:
        raise _Incomplete("PNG", im.size, "pixel data ends before")
    im.load()
    return im


def _decode_tiff(im: ImageFile.ImageFile, data: bytes) -> Image.Image:
    """The strips or tiles Pillow will decode must cover the frame (Pillow leaves uncovered rows black); libtiff,
    for compressed files, and Pillow's raw decoder refuse a strip or tile whose data is cut short."""
    width, height = im.size
    boxes = [
        (min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height))
        for x0, y0, x1, y1 in (tile.extents for tile in im.tile if tile.extents is not None)
    ]
    # the boxes lie on a grid (strips, or tiles of one size): mark its cells
    xs = sorted({0, width, *(b[0] for b in boxes), *(b[2] for b in boxes)})
    ys = sorted({0, height, *(b[1] for b in boxes), *(b[3] for b in boxes)})
    column, row = {x: i for i, x in enumerate(xs)}, {y: i for i, y in enumerate(ys)}
    covered = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        covered[row[y0] : row[y1], column[x0] : column[x1]] = True
    if not covered.all():
        raise _Incomplete("TIFF", im.size, "strips or tiles do not cover")
    im.load()
    return im


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


_DECODERS: dict[str, Callable[[ImageFile.ImageFile, bytes], Image.Image]] = {
    "PNG": _decode_png,
    "JPEG": _decode_jpeg,
    "WEBP": _decode_pillow,
    "BMP": _decode_pillow,
    "GIF": _decode_pillow,
    "TIFF": _decode_tiff,
}
# the decoders accepted for input images; anything else Pillow knows is refused (a smaller attack surface)
INPUT_FORMATS = tuple(_DECODERS)


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
