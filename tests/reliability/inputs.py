"""Hostile and odd inputs, built from real file formats: truncated and corrupt PNGs, decompression bombs,
every Pillow mode the service accepts, animations, hand-made multipart bodies. Pure functions of their
arguments, so every run sends the same bytes; plain test images are `tests/support/images.py`."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from tests.support.images import image_bytes, noise, png, random_rgb


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims `width` x `height` (8-bit grey) whatever the data: a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def zlib_bomb_png(side: int) -> bytes:
    """A real, valid `side` x `side` grey PNG of zeros: a few KiB that inflate to side*side bytes."""
    raw_row = b"\x00" * (side + 1)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(raw_row) for _ in range(side)) + compressor.flush()
    return png_with_header(side, side, data)


def truncated_png() -> bytes:
    data = png(32, 32)
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    """A PNG whose IDAT bytes are scrambled (the CRC is left wrong too)."""
    data = bytearray(png(32, 32))
    start = data.index(b"IDAT") + 8
    for i in range(start, min(start + 64, len(data) - 16)):
        data[i] ^= 0x5A
    return bytes(data)


def mode_image(mode: str) -> bytes:
    """A small image in Pillow mode `mode`, in a format that can hold it."""
    rgb = Image.fromarray(noise(10, 14), "RGB")
    if mode in ("I;16", "I", "F"):
        grey = noise(10, 14, 1)[:, :, 0].astype(np.float64)
        arr = {"I;16": (grey * 257).astype(np.uint16), "I": (grey * 100).astype(np.int32)}.get(
            mode, (grey / 255).astype(np.float32)
        )
        return image_bytes(Image.fromarray(arr), "TIFF")  # uint16 -> I;16, int32 -> I, float32 -> F
    if mode == "P-transparent":
        image = rgb.convert("P")
        image.info["transparency"] = 0
        return image_bytes(image, "PNG", transparency=0)
    if mode in ("CMYK", "LAB", "YCbCr"):
        return image_bytes(rgb.convert(mode), "TIFF" if mode != "YCbCr" else "JPEG")
    return image_bytes(rgb.convert(mode), "PNG" if mode != "RGBa" else "TIFF")


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(noise(12, 12, seed=s), "RGB") for s in range(3)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    return image_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def multipart(files: list[bytes], field: str = "image") -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type, built by hand so odd shapes can be sent."""
    boundary = "vqserve-reliability-boundary"
    parts = []
    for i, data in enumerate(files):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.png"\r\n'
        parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# every codec the server accepts, damaged the ways real files get damaged: cut short, cut with the end marker put
# back, and with the size fields of the header edited (the pixel data left as it was)
def codec_samples() -> dict[str, bytes]:
    """A valid, noisy 64x48 file per decoder path: each accepted format, and the variants that take another path
    through their decoder (progressive JPEG, lossless WebP, LZW TIFF, interlaced PNG)."""
    rgb = Image.fromarray(random_rgb(48, 64, seed=5))
    return {
        "png": image_bytes(rgb, "PNG"),
        "png-interlaced": interlaced_png(np.asarray(rgb)),
        "jpeg": image_bytes(rgb, "JPEG", quality=90),
        "jpeg-progressive": image_bytes(rgb, "JPEG", quality=90, progressive=True),
        "webp": image_bytes(rgb, "WEBP", quality=90),
        "webp-lossless": image_bytes(rgb, "WEBP", lossless=True),
        "bmp": image_bytes(rgb, "BMP"),
        "gif": image_bytes(rgb.convert("P"), "GIF"),
        "tiff": image_bytes(rgb, "TIFF"),
        "tiff-lzw": image_bytes(rgb, "TIFF", compression="tiff_lzw"),
    }


def cut_points(data: bytes, count: int = 10) -> list[int]:
    """`count` lengths spread evenly through the file, none of them the whole file."""
    return [len(data) * k // (count + 1) for k in range(1, count + 1)]


def cut_and_terminated(name: str, data: bytes, length: int) -> bytes:
    """The file cut at `length` and given its format's end back (JPEG's EOI, PNG's IEND, GIF's trailer, WebP's RIFF
    and chunk sizes), so that a decoder meets a well-formed end where pixel data is missing; other formats have
    no end marker and are only cut."""
    cut = bytearray(data[:length])
    if name.startswith("jpeg"):
        return bytes(cut + b"\xff\xd9")
    if name.startswith("png"):
        return bytes(cut + _chunk(b"IEND", b""))
    if name.startswith("gif"):
        return bytes(cut + b"\x00\x3b")
    if name.startswith("webp") and length >= 20:
        cut[4:8] = struct.pack("<I", length - 8)
        cut[16:20] = struct.pack("<I", length - 20)
    return bytes(cut)


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def with_declared_size(name: str, data: bytes, width: int, height: int) -> bytes:
    """The file with the size fields of its header set to `width` x `height` and everything else as it was:
    PNG's IHDR (CRC fixed), JPEG's SOF, BMP's info header, GIF's screen and first image descriptor, TIFF's
    ImageWidth/ImageLength tags, WebP's VP8/VP8L frame header or VP8X canvas."""
    out = bytearray(data)
    if name.startswith("png"):
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    elif name.startswith("jpeg"):
        i = 2
        while out[i + 1] not in _JPEG_SOF:
            i += 2 + struct.unpack(">H", out[i + 2 : i + 4])[0]
        out[i + 5 : i + 9] = struct.pack(">HH", height, width)
    elif name.startswith("bmp"):
        out[18:26] = struct.pack("<ii", width, height)
    elif name.startswith("gif"):
        out[6:10] = struct.pack("<HH", width, height)
        i = 13 + (3 << ((out[10] & 7) + 1) if out[10] & 0x80 else 0)
        while out[i] == 0x21:  # extension blocks before the first image
            i += 2
            while out[i]:
                i += out[i] + 1
            i += 1
        out[i + 5 : i + 9] = struct.pack("<HH", width, height)
    elif name.startswith("tiff"):
        order = "<" if out[:2] == b"II" else ">"
        ifd = struct.unpack(order + "I", out[4:8])[0]
        for k in range(struct.unpack(order + "H", out[ifd : ifd + 2])[0]):
            at = ifd + 2 + 12 * k
            tag, kind = struct.unpack(order + "HH", out[at : at + 4])
            if tag in (256, 257):  # ImageWidth, ImageLength
                value = width if tag == 256 else height
                field = struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
                out[at + 8 : at + 12] = field
    elif name.startswith("webp"):
        kind = bytes(out[12:16])
        if kind == b"VP8X":
            out[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        elif kind == b"VP8 ":
            out[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
        else:  # VP8L: 14 bits of width - 1, then 14 of height - 1
            bits = struct.unpack("<I", out[21:25])[0] & ~((1 << 28) - 1)
            out[21:25] = struct.pack("<I", bits | (width - 1) | ((height - 1) << 14))
    else:
        raise ValueError(f"no size fields known for {name}")
    return bytes(out)


def interlaced_png(arr: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit PNG of an (H, W, 3) or (H, W) uint8 array (Pillow writes none), filter 0."""
    height, width = arr.shape[:2]
    color_type = 2 if arr.ndim == 3 else 0
    raw = b""
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ):
        sub = arr[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """The issue's reproducer: a 16x16 black JPEG (631 bytes) whose SOF claims `width` x `height`."""
    return with_declared_size("jpeg", image_bytes(Image.new("RGB", (16, 16)), "JPEG"), width, height)
