"""Hostile and odd inputs, built from real file formats: truncated and corrupt PNGs, decompression bombs,
every Pillow mode the service accepts, animations, hand-made multipart bodies. Pure functions of their
arguments, so every run sends the same bytes; plain test images are `tests/support/images.py`."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from tests.support.images import image_bytes, noise, png


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
