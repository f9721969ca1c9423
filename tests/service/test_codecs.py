"""Codecs on real image files: formats, modes, EXIF, alpha, limits, padding, tensors and base64."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageOps

from service import codecs
from service.errors import ServiceError
from tests.reliability.inputs import interlaced_png
from tests.support.images import image_bytes, random_image, random_rgb
from tests.support.reference import normalise

BIG = 1 << 30


def read(data: bytes, channels: int = 3, max_pixels: int = BIG) -> np.ndarray:
    return codecs.read_image(data, channels=channels, max_pixels=max_pixels)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_exactly(fmt: str) -> None:
    image = random_image(9, 13)
    args = {"lossless": True} if fmt == "WEBP" else {}
    arr = read(image_bytes(image, fmt, **args))
    assert arr.shape == (9, 13, 3)
    assert np.array_equal(arr, np.asarray(image))


def test_jpeg_decodes_to_rgb() -> None:
    arr = read(image_bytes(random_image(16, 16), "JPEG"))
    assert arr.shape == (16, 16, 3)
    assert arr.dtype == np.uint8


def test_gif_first_frame() -> None:
    frames = [Image.new("P", (8, 8), color) for color in (1, 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    data = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    arr = read(data)
    assert tuple(arr[0, 0]) == (255, 0, 0)


def test_rgba_alpha_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red 200
    rgba[:2, :, 3] = 0  # top half transparent
    rgba[2:, :, 3] = 255  # bottom half opaque
    arr = read(image_bytes(Image.fromarray(rgba, "RGBA")))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[3, 0]) == (200, 0, 0)


def test_la_and_palette_transparency_on_white() -> None:
    la = Image.fromarray(np.stack([np.full((4, 4), 10, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    assert read(image_bytes(la), channels=1).max() == 255
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert tuple(read(image_bytes(palette, transparency=0))[0, 0]) == (255, 255, 255)


def test_grayscale_to_rgb_and_rgb_to_gray() -> None:
    gray = random_image(5, 6, "L")
    arr = read(image_bytes(gray))
    assert arr.shape == (5, 6, 3)
    assert np.array_equal(arr[..., 0], np.asarray(gray))
    assert read(image_bytes(random_image(5, 6)), channels=1).shape == (5, 6, 1)


def test_cmyk_jpeg_converted() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    arr = read(image_bytes(cmyk, "JPEG"))
    assert arr.shape == (8, 8, 3)
    assert arr.min() > 240


def test_sixteen_bit_gray_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    data = image_bytes(Image.fromarray(values))  # a 16-bit grayscale PNG
    arr = read(data, channels=1)
    assert arr[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied() -> None:
    image = random_image(10, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    arr = read(image_bytes(image, "JPEG", exif=exif.tobytes()))
    assert arr.shape[:2] == (20, 10)


def test_pixel_limit_refused_before_decoding() -> None:
    data = image_bytes(Image.new("L", (3000, 3000)))  # compresses to a few KB
    with pytest.raises(ServiceError) as info:
        read(data, max_pixels=1_000_000)
    assert info.value.status == 413


@pytest.mark.parametrize("data", [b"not an image", b"", image_bytes(random_image(32, 32))[:200]])
def test_garbage_and_truncated_files_are_400(data: bytes) -> None:
    with pytest.raises(ServiceError) as info:
        read(data)
    assert info.value.status == 400
    assert info.value.code == "invalid_image"


def test_padding_replicates_edges_to_the_factor() -> None:
    arr = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5, 1)
    padded = codecs.pad_to_multiple(arr, 4)
    assert padded.shape == (4, 8, 1)
    assert np.array_equal(padded[:3, :5], arr)
    assert np.array_equal(padded[3, :5, 0], arr[2, :, 0])
    assert np.array_equal(padded[:3, 7, 0], arr[:, 4, 0])


def test_model_input_range_and_layout() -> None:
    arr = np.array([[[0, 255, 128]]], dtype=np.uint8)
    tensor = codecs.to_model_input(arr, 2)
    assert tensor.shape == (3, 2, 2)
    assert tensor[:, 0, 0].tolist() == pytest.approx(normalise(arr[0, 0]).tolist(), abs=1e-6)  # -1, 1, 1/255


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_write_image_formats(fmt: str) -> None:
    arr = np.asarray(random_image(12, 10))
    data = codecs.write_image(arr, fmt, codecs.ImageCompression())
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == codecs.OUTPUT_FORMATS[fmt]
        assert im.size == (10, 12)
        if fmt == "png":
            assert np.array_equal(np.asarray(im), arr)


def test_png_compress_level_is_used() -> None:
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    fast = codecs.write_image(arr, "png", codecs.ImageCompression(png_compress_level=0))
    small = codecs.write_image(arr, "png", codecs.ImageCompression(png_compress_level=9))
    assert len(small) < len(fast)


@pytest.mark.parametrize("dtype", sorted(codecs.TENSOR_DTYPES))
def test_tensor_bytes_round_trip(dtype: str) -> None:
    tensor = (torch.arange(24) % 7).reshape(2, 3, 4).to(codecs.TENSOR_DTYPES[dtype])
    back = codecs.read_tensor(codecs.tensor_bytes(tensor), [2, 3, 4], dtype)
    assert torch.equal(back, tensor)


def test_tensor_size_mismatch_is_422() -> None:
    with pytest.raises(ServiceError, match="needs 96") as info:
        codecs.read_tensor(b"\0" * 10, [2, 3, 4], "float32")
    assert info.value.status == 422


def test_base64() -> None:
    assert codecs.b64decode(codecs.b64encode(b"abc"), "x") == b"abc"
    assert codecs.b64decode("data:image/png;base64," + codecs.b64encode(b"abc"), "x") == b"abc"
    with pytest.raises(ServiceError) as info:
        codecs.b64decode("***", "image 0")
    assert info.value.code == "invalid_base64"


# valid files of every kind decode to exactly what Pillow reads (the strict decode paths refuse none of them)
def _pillow(data: bytes) -> np.ndarray:
    """What Pillow's own decoders read, through the service's orientation and mode conversion."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(codecs._to_mode(ImageOps.exif_transpose(im), "RGB"))


def _photo(height: int = 120, width: int = 96) -> Image.Image:
    return Image.fromarray(random_rgb(height, width, seed=4))


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def _tiled_tiff(arr: np.ndarray, **options: object) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, arr, photometric="rgb", **options)
    return out.getvalue()


VALID_FILES = {
    "jpeg-420": image_bytes(_photo(), "JPEG", subsampling=2),
    "jpeg-422": image_bytes(_photo(), "JPEG", subsampling=1),
    "jpeg-444": image_bytes(_photo(), "JPEG", subsampling=0),
    "jpeg-odd-size": image_bytes(_photo(37, 53), "JPEG"),
    "jpeg-progressive": image_bytes(_photo(), "JPEG", progressive=True),
    "jpeg-progressive-444": image_bytes(_photo(), "JPEG", progressive=True, subsampling=0),
    "jpeg-optimized": image_bytes(_photo(), "JPEG", optimize=True),
    "jpeg-restart-markers": image_bytes(_photo(), "JPEG", restart_marker_blocks=1),
    "jpeg-restart-rows": image_bytes(_photo(), "JPEG", restart_marker_rows=1, progressive=True),
    "jpeg-grayscale": image_bytes(_photo().convert("L"), "JPEG"),
    "jpeg-grayscale-progressive": image_bytes(_photo().convert("L"), "JPEG", progressive=True),
    "jpeg-cmyk": image_bytes(_photo().convert("CMYK"), "JPEG"),
    "jpeg-cmyk-progressive": image_bytes(_photo().convert("CMYK"), "JPEG", progressive=True),
    "jpeg-quality-100": image_bytes(_photo(), "JPEG", quality=100),
    "jpeg-quality-5": image_bytes(_photo(), "JPEG", quality=5),
    "jpeg-exif-rotated": image_bytes(_photo(), "JPEG", exif=_orientation(8)),
    "jpeg-icc-comment": image_bytes(_photo(), "JPEG", icc_profile=b"\0" * 600, comment=b"hello"),
    "jpeg-flat-1024": image_bytes(Image.new("RGB", (1024, 1024), (40, 90, 200)), "JPEG"),
    "jpeg-trailing-bytes": image_bytes(_photo(), "JPEG") + b"\0" * 100,
    "mpo": image_bytes(_photo(), "MPO", save_all=True, append_images=[_photo().rotate(90)]),
    "png-interlaced": interlaced_png(np.asarray(_photo())),
    "png-interlaced-grey-odd": interlaced_png(np.asarray(_photo(5, 3).convert("L"))),
    "png-multi-idat": image_bytes(_photo(400, 300), "PNG", compress_level=0),
    "png-16-bit": image_bytes(Image.fromarray(np.asarray(_photo().convert("L")).astype(np.uint16) * 257)),
    "png-1-bit": image_bytes(_photo().convert("1")),
    "png-palette-4-bit": image_bytes(_photo().convert("P", colors=16), bits=4),
    "png-grey-alpha": image_bytes(_photo().convert("LA")),
    "png-rgba": image_bytes(_photo().convert("RGBA")),
    "apng": image_bytes(_photo(), "PNG", save_all=True, append_images=[_photo().rotate(90)]),
    "tiff-strips": image_bytes(_photo(400, 300), "TIFF"),
    "tiff-deflate": image_bytes(_photo(400, 300), "TIFF", compression="tiff_adobe_deflate"),
    "tiff-packbits": image_bytes(_photo(), "TIFF", compression="packbits"),
    "tiff-tiled": _tiled_tiff(np.asarray(_photo(100, 90)), tile=(32, 48)),
    "tiff-tiled-deflate": _tiled_tiff(np.asarray(_photo(100, 90)), tile=(32, 32), compression="zlib"),
    "tiff-rows-per-strip-1": _tiled_tiff(np.asarray(_photo(20, 30)), rowsperstrip=1),
}


@pytest.mark.parametrize("name", list(VALID_FILES))
def test_valid_files_decode_to_what_pillow_reads(name: str) -> None:
    data = VALID_FILES[name]
    assert np.array_equal(read(data), _pillow(data)), name


def test_jpeg_pixels_match_pillow_on_a_real_photo() -> None:
    """The sample photos of the web page, as JPEG at several settings: byte-identical to Pillow's decode."""
    samples = Path(codecs.__file__).parent / "static" / "samples"
    for path in sorted(samples.glob("*.png"))[:3]:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        for args in ({}, {"progressive": True}, {"subsampling": 0, "quality": 97}):
            data = image_bytes(rgb, "JPEG", **args)
            assert np.array_equal(read(data), _pillow(data)), (path.name, args)


def test_a_highly_compressed_valid_png_decodes_while_its_rows_are_counted() -> None:
    """36 MB of rows from 35 KB of zlib: the row count streams through (1 MiB at a time) and the file decodes."""
    data = image_bytes(Image.new("L", (6000, 6000), 7))
    assert len(data) < 100_000
    arr = read(data, channels=1)
    assert arr.shape == (6000, 6000, 1)
    assert int(arr.max()) == 7


def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding() -> None:
    data = image_bytes(random_image(16, 16), "JPEG", progressive=True)
    sos = data.index(b"\xff\xda")
    header_end = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    scan = data[sos:header_end]
    with pytest.raises(ServiceError, match="more than 1000 scans") as info:
        read(data[:sos] + scan * 1001 + data[sos:])
    assert info.value.status == 400
