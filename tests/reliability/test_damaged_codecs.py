"""Damaged files in every codec the server accepts (PNG, JPEG, WebP, BMP, GIF, TIFF, and the variants that take
another path through their decoder): each cut at 10 points, cut with its end marker put back, and with the size
fields of its header edited. Every one is refused with a 400 (or a 413 over the pixel limit) whose message is a
plain sentence naming the format and the problem, never decoded into a 200 with pixels the file does not hold,
never a 5xx.

The matrix runs through `service.codecs.read_image`, the one decode path every route shares; a few of the same
files go through the real HTTP app here and in the hostile catalogue (`test_hostile_input.py`), and the issue's
size-edited JPEG goes to a real server process, where its time and peak memory are measured."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import codecs
from service.app import create_app
from service.errors import ServiceError
from service.settings import Settings
from tests.support.images import image_bytes, png, random_rgb
from tests.support.servers import serving_checkpoint

from . import inputs

pytestmark = pytest.mark.timeout(120)

SAMPLES = inputs.codec_samples()
WIDTH, HEIGHT = 64, 48  # every sample's size
MAX_PIXELS = 300_000  # the hostile catalogue's limit
FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP", "bmp": "BMP", "gif": "GIF", "tiff": "TIFF"}

# Python's and the libraries' insides that a message must not show
INTERNALS = re.compile(
    r"<|>|object at|\b0x[0-9a-f]{4,}|Error\b|errno|Traceback|\w\(\)|decoder error|tj[A-Z]\w+|[A-Z][a-z]+[A-Z]\w+:",
)


def format_of(name: str) -> str:
    return FORMAT[name.split("-")[0]]


def refusal(data: bytes, max_pixels: int = MAX_PIXELS) -> ServiceError:
    """The ServiceError read_image raises for `data`; fails if it decodes the file or raises anything else."""
    try:
        arr = codecs.read_image(data, channels=3, max_pixels=max_pixels)
    except ServiceError as exc:
        return exc
    raise AssertionError(f"decoded into a {arr.shape} array instead of a refusal")


def assert_plain_refusal(exc: ServiceError, name: str, status: int = 400) -> None:
    assert exc.status == status, exc.message
    assert exc.code == ("invalid_image" if status == 400 else "image_too_large")
    assert not INTERNALS.search(exc.message), exc.message
    assert format_of(name) in exc.message, exc.message  # names the format it found
    assert len(exc.message.split()) >= 6, exc.message  # a sentence, not a bare code


def test_the_samples_are_valid_and_decode_in_full() -> None:
    """The undamaged files decode, at their size; the lossless ones to exactly the pixels Pillow reads."""
    for name, data in SAMPLES.items():
        arr = codecs.read_image(data, channels=3, max_pixels=MAX_PIXELS)
        assert arr.shape == (HEIGHT, WIDTH, 3), name
    reference = codecs.read_image(SAMPLES["png"], channels=3, max_pixels=MAX_PIXELS)
    for name in ("png-interlaced", "webp-lossless", "bmp", "tiff", "tiff-lzw"):
        assert np.array_equal(codecs.read_image(SAMPLES[name], channels=3, max_pixels=MAX_PIXELS), reference), name


# cut short: the file ends inside its header or its pixel data
CUTS = [(name, length) for name, data in SAMPLES.items() for length in inputs.cut_points(data)]


@pytest.mark.parametrize(("name", "length"), CUTS, ids=[f"{n}-at-{c}" for n, c in CUTS])
def test_a_cut_file_is_refused(name: str, length: int) -> None:
    assert_plain_refusal(refusal(SAMPLES[name][:length]), name)


# cut, with the format's end put back: the decoder meets a well-formed end where pixel data is missing (libjpeg
# fills the rest of the frame with grey unless told to stop)
TERMINATED = [(n, c) for n, c in CUTS if n.split("-")[0] in ("jpeg", "png", "gif", "webp")]


@pytest.mark.parametrize(("name", "length"), TERMINATED, ids=[f"{n}-at-{c}" for n, c in TERMINATED])
def test_a_cut_file_with_its_end_put_back_is_refused(name: str, length: int) -> None:
    assert_plain_refusal(refusal(inputs.cut_and_terminated(name, SAMPLES[name], length)), name)


# a progressive JPEG cut at a scan boundary, EOI put back: a well-formed file whose later scans are missing, which
# libjpeg decodes without a warning into a coarser image (or one with a grey component)
PROGRESSIVE = SAMPLES["jpeg-progressive"]
SCAN_STARTS = [i for i in range(len(PROGRESSIVE) - 1) if PROGRESSIVE[i : i + 2] == b"\xff\xda"][1:]


@pytest.mark.parametrize("at", SCAN_STARTS)
def test_a_progressive_jpeg_missing_its_last_scans_is_refused(at: int) -> None:
    assert len(SCAN_STARTS) >= 8
    assert_plain_refusal(refusal(PROGRESSIVE[:at] + b"\xff\xd9"), "jpeg")


# the header's size fields claim more than the pixel data holds
LARGER = {
    "taller": (WIDTH, 2 * HEIGHT),
    "wider": (2 * WIDTH, HEIGHT),
    "twice-as-large": (2 * WIDTH, 2 * HEIGHT),
    "one-more-row": (WIDTH, HEIGHT + 1),
    "500x500": (500, 500),
}
ENLARGED = [(name, edit) for name in SAMPLES for edit in LARGER]


@pytest.mark.parametrize(("name", "edit"), ENLARGED, ids=[f"{n}-{e}" for n, e in ENLARGED])
def test_a_size_field_claiming_more_than_the_data_is_refused(name: str, edit: str) -> None:
    width, height = LARGER[edit]
    assert_plain_refusal(refusal(inputs.with_declared_size(name, SAMPLES[name], width, height)), name)


@pytest.mark.xfail(
    strict=True,
    reason="known gap: libwebp decodes a lossy frame whose header was widened from the same bits (its bool decoder "
    "reads them under the new geometry without running out), so no decoder sees the edit",
)
def test_a_lossy_webp_widened_in_its_header_is_refused() -> None:
    """The 64x48 sample widened is refused (above); this 40x48 one widened to 76 is not: libwebp reads the 5
    macroblocks of each row from data coded for 3, and its pixels are that data under the wrong geometry."""
    data = image_bytes(Image.fromarray(random_rgb(48, 40)), "WEBP", quality=90)
    refusal(inputs.with_declared_size("webp", data, 76, 48))


@pytest.mark.parametrize("name", list(SAMPLES))
def test_a_size_field_over_the_pixel_limit_is_413_before_decoding(name: str) -> None:
    big = inputs.with_declared_size(name, SAMPLES[name], 1000, 1000)
    assert_plain_refusal(refusal(big), name, status=413)


# the header's size fields claim less than the pixel data holds: the decoder stops early and leaves data over
SMALLER = {"shorter": (WIDTH, HEIGHT // 2), "narrower": (WIDTH // 2, HEIGHT), "one-row-less": (WIDTH, HEIGHT - 1)}
SHRUNK = [(name, edit) for name in SAMPLES for edit in SMALLER]


@pytest.mark.parametrize(("name", "edit"), SHRUNK, ids=[f"{n}-{e}" for n, e in SHRUNK])
def test_a_size_field_claiming_less_than_the_data_never_fills_in_pixels(name: str, edit: str) -> None:
    """Refused where the decoder can tell that data is left over (PNG, and JPEG when whole MCUs are left);
    elsewhere (BMP, GIF, TIFF, WebP decoders stop once their frame is full) at most an image of the declared size
    from the file's own bytes. Never a 5xx, never a pixel the file does not hold."""
    width, height = SMALLER[edit]
    data = inputs.with_declared_size(name, SAMPLES[name], width, height)
    try:
        arr = codecs.read_image(data, channels=3, max_pixels=MAX_PIXELS)
    except ServiceError as exc:
        assert_plain_refusal(exc, name)
        return
    # PNG counts rows exactly; JPEG codes whole MCUs (16 rows here), so one row less still ends with the data
    must_refuse = name.startswith("png") or (name.startswith("jpeg") and edit != "one-row-less")
    assert not must_refuse, f"{name} {edit} decoded into {arr.shape}"
    assert arr.shape == (height, width, 3)


# the issue's reproducer and its relatives: a tiny JPEG whose SOF claims a large frame
@pytest.mark.parametrize(("width", "height"), [(1000, 1000), (4000, 4000), (17, 16), (16, 17), (4096, 1), (1, 4096)])
def test_the_size_edited_jpeg_of_the_issue_is_refused(width: int, height: int) -> None:
    exc = refusal(inputs.jpeg_claiming(width, height), max_pixels=4096 * 4096)
    assert_plain_refusal(exc, "jpeg")


def test_a_size_edited_file_is_refused_in_bounded_time() -> None:
    """Size-edited files that declare frames of 48-64 MB (4096x4096) are refused in well under the time any decode
    of such a frame would take; measured once, for every format that can declare that size."""
    for name in SAMPLES:
        data = inputs.with_declared_size(name, SAMPLES[name], 4096, 4096)
        start = time.perf_counter()
        exc = refusal(data, max_pixels=4096 * 4096)
        elapsed = time.perf_counter() - start
        assert exc.status == 400, (name, exc.message)
        assert elapsed < 2.0, (name, elapsed)


def test_messages_are_plain_sentences_naming_the_format() -> None:
    """No object reprs, exception names or library function names: a sentence saying what is wrong."""
    cases = {
        "garbage": bytes(range(256)) * 4,
        "text": b"hello, I am not an image",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        "png-magic-only": b"\x89PNG\r\n\x1a\n",
        "jpeg-magic-only": b"\xff\xd8\xff",
        "gif-magic-only": b"GIF89a",
        "bmp-magic-only": b"BM" + b"\x00" * 20,
        "tiff-magic-only": b"II*\x00\x08\x00\x00\x00",
        "webp-magic-only": b"RIFF\x10\x00\x00\x00WEBPVP8 ",
    }
    for what, data in cases.items():
        exc = refusal(data)
        assert exc.status == 400, (what, exc.message)
        assert not INTERNALS.search(exc.message), (what, exc.message)
        assert len(exc.message.split()) >= 5, (what, exc.message)
        if "magic" in what:
            assert format_of(what) in exc.message, (what, exc.message)
    assert "accepted" in refusal(b"hello, I am not an image").message  # says which formats are


# through the real HTTP app
@pytest.fixture(scope="module")
def client(tiny_checkpoint: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_path=tiny_checkpoint, warmup=False, torch_threads=1, max_pixels=MAX_PIXELS))
    with TestClient(app) as test_client:
        yield test_client


HTTP_CASES = {
    "jpeg-claiming-400x400": inputs.jpeg_claiming(400, 400),
    "jpeg-cut-with-eoi": inputs.cut_and_terminated("jpeg", SAMPLES["jpeg"], len(SAMPLES["jpeg"]) * 2 // 3),
    "progressive-jpeg-taller": inputs.with_declared_size("jpeg-progressive", SAMPLES["jpeg-progressive"], 64, 96),
    "png-taller": inputs.with_declared_size("png", SAMPLES["png"], 64, 96),
    "tiff-taller": inputs.with_declared_size("tiff", SAMPLES["tiff"], 64, 96),
    "gif-cut-with-trailer": inputs.cut_and_terminated("gif", SAMPLES["gif"], len(SAMPLES["gif"]) // 2),
}


@pytest.mark.parametrize("path", ["/encode", "/reconstruct", "/remote/encode"])
@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_damaged_files_get_a_400_over_http(client: TestClient, case: str, path: str) -> None:
    reply = client.post(path, content=HTTP_CASES[case], headers={"content-type": "image/jpeg"})
    assert reply.status_code == 400, reply.text[:300]
    message = str(reply.json()["error"])
    assert not INTERNALS.search(message.replace("{", "").replace("}", "")), message


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_the_issue_jpeg_is_refused_by_a_real_server_in_bounded_time_and_memory(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """631 bytes claiming 4096x4096 (the default pixel limit's edge): served, they would be a 48 MB frame and
    gigabytes of activations in the model (the issue saw 6 GB in 5 s at 4000x4000). Refused with a 400 in under
    2 s, and the server's peak memory does not move by more than a small fraction of the frame."""
    body = inputs.jpeg_claiming(4096, 4096)
    assert len(body) == 631
    with serving_checkpoint(tiny_checkpoint, tmp_path) as server:
        assert server.process is not None
        warm = httpx.post(f"{server.url}/encode", content=png(16, 16), headers={"content-type": "image/png"})
        assert warm.status_code == 200
        peak = _peak_rss_bytes(server.process.pid)
        start = time.perf_counter()
        reply = httpx.post(
            f"{server.url}/encode", content=body, headers={"content-type": "image/jpeg"}, timeout=httpx.Timeout(10.0)
        )
        elapsed = time.perf_counter() - start
        growth = _peak_rss_bytes(server.process.pid) - peak
    assert reply.status_code == 400, reply.text[:300]
    assert elapsed < 2.0, elapsed
    assert growth < 32 * 2**20, f"peak RSS grew {growth / 2**20:.0f} MiB"
