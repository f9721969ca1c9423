"""The page end to end: a real `python -m service` on 127.0.0.1 and Debian's Chromium driven by Playwright.

Served: a tiny random-weight RGB model as `default` (fast, and every code decodes to something different) and
the shipped digits checkpoint as `digits`. The tests act as a user would (pick a file, click the code map,
type a code, paint) and read the outcome from the page: its canvases' pixels, its read-outs and a screenshot.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.checkpoints import TINY_RGB, build_checkpoint
from tests.support.constants import WEIGHTS
from tests.support.images import image_bytes
from tests.support.servers import serving
from tests.web.page import ARGS, CHROMIUM, DECODED, MODELS_LISTED

pytestmark = pytest.mark.timeout(240)

WAIT_MS = 60_000

# pixels of a canvas as a flat RGBA list, read inside the page
CANVAS_PIXELS = """(id) => {
  const canvas = document.getElementById(id);
  return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);
}"""
# a file dropped on the drop zone (built from a bundled sample, since a test cannot drag from the desktop)
DROP_FILE = """async (sample) => {
  const blob = await (await fetch(`/static/${sample}`)).blob();
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], "dropped.png", { type: "image/png" }));
  const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true });
  document.getElementById("dropzone").dispatchEvent(drop);
}"""
# an image's natural size or a canvas's size, [width, height]
SIZE = """(id) => {
  const el = document.getElementById(id);
  return el instanceof HTMLImageElement ? [el.naturalWidth, el.naturalHeight] : [el.width, el.height];
}"""
# an <img> drawn into a scratch canvas, to compare it with a canvas pixel for pixel
IMAGE_PIXELS = """(id) => {
  const img = document.getElementById(id);
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data);
}"""


@contextmanager
def serve(tmp: Path, *flags: str) -> Iterator[str]:
    """`python -m service` serving default (tiny, random) and digits (shipped); yields its base URL."""
    tiny = tmp / "tiny"
    if not tiny.exists():
        build_checkpoint(tiny, TINY_RGB, seed=3)
    digits = WEIGHTS / "digits"
    args = ["--models", f"default={tiny},digits={digits}", "--torch-threads", "1", "--no-warmup", *flags]
    with serving(args, tmp / f"server-{time.monotonic_ns()}.log") as server:
        yield server.url


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-server")


@pytest.fixture(scope="module")
def server(server_dir: Path) -> Iterator[str]:
    with serve(server_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run the page tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page on the service; fails the test on any script error or console error."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    page.problems = []  # (kind, text); a test that provokes an error clears what it expects
    page.on("pageerror", lambda error: page.problems.append(("pageerror", str(error))))
    page.on("console", lambda msg: msg.type == "error" and page.problems.append(("console", msg.text)))
    page.set_default_timeout(WAIT_MS)
    page.goto(server + "/")
    page.wait_for_function(MODELS_LISTED)
    yield page
    problems = page.problems
    context.close()
    assert not problems, problems


def gradient_png(height: int, width: int) -> bytes:
    """A smooth image with structure (not noise), so that the page has something to show."""
    y, x = np.mgrid[0:height, 0:width]
    red, green = x * 255 // max(1, width - 1), y * 255 // max(1, height - 1)
    blue = (x + y) * 127 // (width + height)
    rgb = np.stack([red, green, blue])
    return image_bytes(Image.fromarray(rgb.transpose(1, 2, 0).astype(np.uint8), "RGB"))


def wait_decodes(page: Any, count: int) -> None:
    page.wait_for_function(DECODED, arg=str(count))


def map_box(page: Any) -> dict[str, float]:
    """The code map's box in the viewport (scrolled into view: mouse events need it on screen)."""
    page.locator("#codemap").scroll_into_view_if_needed()
    box: dict[str, float] = page.locator("#codemap").bounding_box()
    return box


def click_cell(page: Any, row: int, col: int) -> None:
    box = map_box(page)
    h, w = page.evaluate("() => [state.result.shape[0], state.result.shape[1]]")
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / w, box["y"] + (row + 0.5) * box["height"] / h)


def test_upload_reconstruct_and_edit_a_code(page: Any, tmp_path: Path) -> None:
    height, width = 38, 50  # not multiples of the downsample factor: the service pads, the page crops
    upload = {"name": "gradient.png", "mimeType": "image/png", "buffer": gradient_png(height, width)}
    page.set_input_files("#file", files=[upload])
    wait_decodes(page, 1)

    # the reconstruction at the original size, and the numbers about it
    assert page.evaluate(SIZE, "reconstruction") == [width, height]
    assert page.locator("#stat-psnr").inner_text().endswith(" dB")
    assert float(page.locator("#stat-psnr").inner_text().split()[0]) > 0
    h, w = (height + 1) // 2, (width + 1) // 2  # the tiny model downsamples by 2
    assert page.locator("#stat-grid").inner_text().startswith(f"{h} × {w} codes for {height} × {width} px")
    bpp = np.log2(64) * h * w / (height * width)
    assert page.locator("#stat-bpp").inner_text().startswith(f"{bpp:.3f}")
    assert "encode" in page.locator("#stat-time").inner_text()
    assert "decode" in page.locator("#stat-time").inner_text()

    # the code map: one cell per code, and the edited view starts as /decode of the untouched grid
    codemap = page.evaluate(SIZE, "codemap")
    assert codemap[0] * h == codemap[1] * w
    assert codemap[0] >= w
    edited_before = np.array(page.evaluate(CANVAS_PIXELS, "edited"), dtype=np.int16)
    reconstruction = np.array(page.evaluate(IMAGE_PIXELS, "reconstruction"), dtype=np.int16)
    assert edited_before.shape == (height * width * 4,)
    assert np.abs(edited_before - reconstruction).max() <= 2, "decode(encode(x)) differs from reconstruct(x)"
    map_pixels = np.array(page.evaluate(CANVAS_PIXELS, "codemap")).reshape(-1, 4)
    assert len(np.unique(map_pixels[:, :3], axis=0)) > 1, "the code map is one flat colour"
    histogram = np.array(page.evaluate(CANVAS_PIXELS, "histogram")).reshape(-1, 4)
    assert (histogram[:, 3] > 0).sum() > 100, "the usage histogram drew no bars"

    # hover read-out
    box = map_box(page)
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    indices = page.evaluate("() => state.result.indices")
    assert page.locator("#hover").inner_text().startswith("row 0, col 0")
    assert f"code {indices[0][0]}," in page.locator("#hover").inner_text()

    # select a cell, give it another code, and the decoded image changes
    row, col = h // 2, w // 2
    click_cell(page, row, col)
    assert page.locator("#code").input_value() == str(indices[row][col])
    new_code = (indices[row][col] + 17) % 64
    page.fill("#code", str(new_code))
    page.click("#apply")
    wait_decodes(page, 2)
    assert page.evaluate("() => state.edited")[row][col] == new_code
    assert "1 cell edited" in page.locator("#edit-info").inner_text()
    edited_after = np.array(page.evaluate(CANVAS_PIXELS, "edited"), dtype=np.int16)
    changed = np.abs(edited_after - edited_before).reshape(height, width, 4)[..., :3].max(axis=-1) > 0
    assert changed.any(), "the decoded image did not change after the edit"
    ys, xs = np.nonzero(changed)  # the change is local: around the edited cell, not everywhere
    assert abs(ys.mean() - (row * 2 + 1)) < height / 4
    assert abs(xs.mean() - (col * 2 + 1)) < width / 4

    # paint a region with one code
    page.check("input[name=tool][value=paint]")
    page.select_option("#brush", "3")
    page.fill("#code", "5")
    box = map_box(page)
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.2, steps=8)
    page.mouse.up()
    wait_decodes(page, 3)
    painted = sum(code == 5 for line in page.evaluate("() => state.edited") for code in line)
    assert painted >= 3 * (w // 2), f"painting set only {painted} cells"
    assert not np.array_equal(np.array(page.evaluate(CANVAS_PIXELS, "edited"), dtype=np.int16), edited_after)

    # undo: back to the reconstruction
    page.click("#reset")
    wait_decodes(page, 4)
    assert page.evaluate("() => state.edited") == indices
    assert np.array_equal(np.array(page.evaluate(CANVAS_PIXELS, "edited"), dtype=np.int16), edited_before)

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_not_blank(shot)


def test_digit_sample_switches_to_the_grayscale_model_in_a_narrow_window(page: Any, tmp_path: Path) -> None:
    page.set_viewport_size({"width": 380, "height": 900})
    page.click("button[data-sample='samples/digit-7.png']")
    wait_decodes(page, 1)
    assert page.locator("#model").input_value() == "digits"
    assert page.locator("#stat-grid").inner_text().startswith("7 × 7 codes for 28 × 28 px")
    psnr = float(page.locator("#stat-psnr").inner_text().split()[0])
    assert psnr > 15, "the shipped digits model does not reconstruct a digit"
    # nothing sticks out sideways at phone width
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    # keyboard: focus the map, arrows select a cell, Enter goes to the code field
    page.focus("#codemap")
    page.keyboard.press("ArrowRight")  # the first arrow selects the top-left cell
    assert page.locator("#edit-info").inner_text().startswith("selected row 0, col 0")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    assert page.locator("#edit-info").inner_text().startswith("selected row 1, col 1")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "code"

    # drop a file on the drop zone, as a file manager would
    page.evaluate(DROP_FILE, "samples/digit-2.png")
    wait_decodes(page, 2)
    assert page.locator("#status").inner_text() == "Done."
    assert page.evaluate("() => state.image.name") == "dropped.png"

    # the histogram: hover reads out a code, a click picks the most used code as the paint brush
    counts = page.evaluate("() => Array.from(state.counts)")
    top = int(np.argmax(counts))
    page.locator("#histogram").scroll_into_view_if_needed()
    bar = page.locator("#histogram").bounding_box()
    x = bar["x"] + (top + 0.5) * bar["width"] / len(counts)
    page.mouse.move(x, bar["y"] + bar["height"] - 2)
    cells = f"{counts[top]} cell" + ("s" if counts[top] > 1 else "")
    assert page.locator("#hist-info").inner_text() == f"code {top}: {cells}"
    page.mouse.click(x, bar["y"] + bar["height"] - 2)
    assert page.locator("#code").input_value() == str(top)
    assert page.is_checked("input[name=tool][value=paint]")
    shot = tmp_path / "narrow.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_not_blank(shot)


def test_a_file_that_is_not_an_image_shows_the_service_error(page: Any) -> None:
    not_an_image = {"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}
    page.set_input_files("#file", files=[not_an_image])
    page.wait_for_function("() => document.body.dataset.state === 'error'")
    message = page.locator("#error").inner_text()
    assert "invalid_image" in message, message
    assert "HTTP 400" in message, message
    assert page.locator("#results").is_hidden()
    # the browser logs the failed request itself; that one is expected
    page.problems[:] = [p for p in page.problems if "status of 4" not in p[1]]


def test_api_key_is_asked_for_and_used(browser: Any, server_dir: Path) -> None:
    with serve(server_dir, "--api-keys", "s3cret") as url:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(url + "/")
            page.wait_for_function("() => document.body.dataset.state === 'error'")
            message = page.locator("#error").inner_text()
            assert "unauthorized" in message, message
            assert "API key" in message, message
            page.click("summary")
            page.fill("#api-key", "s3cret")
            page.press("#api-key", "Enter")
            page.wait_for_function(MODELS_LISTED)
            assert page.locator("#error").is_hidden()
            page.click("button[data-sample='samples/digit-5.png']")
            wait_decodes(page, 1)
            assert page.locator("#model").input_value() == "digits"

            # a decode that fails (the key changed under the page) marks the decoded picture stale; the grid and
            # the first results still hold and stay
            page.fill("#api-key", "wrong")
            page.focus("#codemap")
            page.keyboard.press("ArrowRight")  # selects the top-left cell
            code = (page.evaluate("() => state.edited[0][0]") + 1) % 128
            page.fill("#code", str(code))
            page.click("#apply")
            page.wait_for_function("() => document.body.dataset.state === 'error'")
            assert "unauthorized" in page.locator("#error").inner_text()
            assert page.locator("#edited-stale").is_visible()
            assert "stale" in (page.locator("#edited").get_attribute("class") or "")
            assert page.locator("#stat-psnr-edited").inner_text() == "–"
            assert page.is_disabled("#download-decoded")
            assert page.locator("#results").is_visible()
            assert page.evaluate("() => state.edited[0][0]") == code
            # the right key again: the next edit decodes, and the mark and the message go
            page.fill("#api-key", "s3cret")
            page.fill("#code", str((code + 1) % 128))
            page.click("#apply")
            wait_decodes(page, 2)
            assert page.locator("#edited-stale").is_hidden()
            assert page.locator("#error").is_hidden()
            assert "stale" not in (page.locator("#edited").get_attribute("class") or "")
            assert page.locator("#stat-psnr-edited").inner_text().endswith(" dB")
        finally:
            context.close()


def assert_not_blank(path: Path) -> None:
    with Image.open(path) as shot:
        pixels = np.asarray(shot.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10, "the screenshot is (nearly) one flat colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the screenshot has almost no colours"


def test_the_readme_screenshot_script_runs_on_the_shipped_models(browser: Any, tmp_path: Path) -> None:
    """`python -m docs.screenshot` (which remakes the README's pictures) still drives the page to the end."""
    from docs.screenshot import capture, capture_generate, serve_args

    shot = tmp_path / "web-page.png"
    generate_shot = tmp_path / "web-page-generate.png"
    with serving(serve_args(), tmp_path / "server.log") as server:
        capture(browser, server.url, shot, code=1234)
        capture_generate(browser, server.url, generate_shot, label=3, seed=0)
    for picture in (shot, generate_shot):
        assert_not_blank(picture)
        with Image.open(picture) as image:
            size = image.size
        assert min(size) > 600, f"{picture.name} {size}: not the whole results card"


# ------------------------------------------------------------------------------------------------- issue 19


def upload_gradient(page: Any, height: int = 38, width: int = 50) -> bytes:
    """Pick a gradient PNG in the file input and wait for its first decode; returns the PNG."""
    data = gradient_png(height, width)
    page.set_input_files("#file", files=[{"name": "gradient.png", "mimeType": "image/png", "buffer": data}])
    wait_decodes(page, int(page.evaluate("() => document.getElementById('edited').dataset.decodes")) + 1)
    return data


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def canvas_rgb(page: Any, canvas: str) -> np.ndarray:
    height, width = page.evaluate(SIZE, canvas)[::-1]
    return np.array(page.evaluate(CANVAS_PIXELS, canvas), dtype=np.int16).reshape(height, width, 4)[..., :3]


def test_code_map_draws_each_code_in_its_codebook_colour(page: Any, server: str) -> None:
    upload_gradient(page)
    colors = np.array(httpx.get(f"{server}/models/default/codebook/colors", timeout=10).json()["colors"])
    indices = np.array(page.evaluate("() => state.result.indices"))
    h, w = indices.shape
    pixels = canvas_rgb(page, "codemap")
    size = pixels.shape[0] // h  # square cells
    assert pixels.shape[:2] == (h * size, w * size)
    centres = pixels[size // 2 :: size, size // 2 :: size]  # one pixel in the middle of every cell
    assert np.array_equal(centres, colors[indices]), "a cell is not drawn in its code's colour"
    assert len(np.unique(indices)) > 3, "the gradient uses too few codes to show anything"
    # the read-out on hover still names the code
    box = map_box(page)
    page.mouse.move(box["x"] + box["width"] * (w - 0.5) / w, box["y"] + box["height"] * (h - 0.5) / h)
    assert f"row {h - 1}, col {w - 1}" in page.locator("#hover").inner_text()
    assert f"code {indices[h - 1, w - 1]}," in page.locator("#hover").inner_text()


def bar_heights(page: Any, bins: int) -> np.ndarray:
    """Height in canvas pixels of each histogram bar, from its coverage (the partly covered top pixel counts by
    its alpha); the 1-pixel axis line under an empty bar counts as 1."""
    pixels = np.array(page.evaluate(CANVAS_PIXELS, "histogram"), dtype=np.float64).reshape(160, 1024, 4)
    columns = (np.arange(bins) * 1024 / bins + 1024 / bins / 2).astype(int)
    return np.asarray(pixels[:, columns, 3].sum(axis=0) / 255)


def test_histogram_is_log_scaled_so_painting_does_not_flatten_the_other_bars(page: Any) -> None:
    upload_gradient(page)
    page.check("input[name=tool][value=paint]")
    page.select_option("#brush", "5")
    page.fill("#code", "5")
    box = map_box(page)
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    for y in (0.15, 0.4, 0.65):  # three bands of the 5x5 brush: most of the grid becomes code 5
        page.mouse.move(box["x"] + 2, box["y"] + box["height"] * y, steps=2)
        page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] * y, steps=12)
    page.mouse.up()
    wait_decodes(page, 2)
    counts = np.array(page.evaluate("() => Array.from(state.counts)"), dtype=np.float64)
    used = counts > 0
    assert counts.max() > 150, counts
    assert used.sum() > 3, counts
    top = 160 - 8  # the drawing height of the tallest bar

    assert page.is_checked("input[name=hist-scale][value=log]"), "log is the default"
    log_heights = bar_heights(page, len(counts))
    expected = np.maximum(2, np.log1p(counts) / np.log1p(counts.max()) * top)
    assert np.abs(log_heights[used] - expected[used]).max() < 1.01, (log_heights[used], expected[used])
    assert log_heights[used].min() > 0.1 * top, "a used code's bar is flat on the log scale"

    page.check("input[name=hist-scale][value=linear]")
    linear_heights = bar_heights(page, len(counts))
    expected = np.maximum(2, counts / counts.max() * top)
    assert np.abs(linear_heights[used] - expected[used]).max() < 1.01, (linear_heights[used], expected[used])
    assert page.locator("#histogram").get_attribute("data-scale") == "linear"
    assert "linear scale" in page.locator("#hist-info").inner_text()
    rare = counts == counts[used].min()
    assert (log_heights[rare] > 3 * linear_heights[rare]).all(), "log does not lift the rarely used codes"


def test_apply_button_says_what_it_does_in_each_tool(page: Any) -> None:
    upload_gradient(page)
    click_cell(page, 3, 4)
    assert page.locator("#apply").inner_text() == "Apply to selected cell"
    page.check("input[name=tool][value=paint]")
    assert page.locator("#apply").inner_text() == "Paint the selected cell"
    page.select_option("#brush", "3")
    assert page.locator("#apply").inner_text() == "Paint 3×3 around the selected cell"
    page.fill("#code", "9")
    page.click("#apply")  # and it does what it says: a 3x3 block around the selected cell
    wait_decodes(page, 2)
    edited = np.array(page.evaluate("() => state.edited"))
    assert (edited[2:5, 3:6] == 9).all()
    page.check("input[name=tool][value=select]")
    assert page.locator("#apply").inner_text() == "Apply to selected cell"
    # a code out of range (the form's own check stops Apply; painting asks the page) is said next to the
    # editor, and the results stay: they still hold
    page.check("input[name=tool][value=paint]")
    page.fill("#code", "64")
    click_cell(page, 8, 8)
    assert "from 0 to 63" in page.locator("#edit-error").inner_text()
    assert page.evaluate("() => state.edited[8][8]") != 64
    assert page.locator("#results").is_visible()
    assert page.locator("#error").is_hidden()


def test_a_failed_run_leaves_no_result_of_the_previous_image(page: Any) -> None:
    upload_gradient(page)
    assert page.locator("#results").is_visible()
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}])
    page.wait_for_function("() => document.body.dataset.state === 'error'")
    assert "invalid_image" in page.locator("#error").inner_text()
    assert page.locator("#results").is_hidden(), "the previous image's result stays under the error"
    assert page.evaluate("() => state.result === null && document.getElementById('original').src === ''")
    page.problems[:] = [p for p in page.problems if "status of 4" not in p[1]]
    # the next good image shows its result and clears the error
    upload_gradient(page, 20, 24)
    assert page.locator("#error").is_hidden()
    assert page.locator("#stat-grid").inner_text().startswith("10 × 12 codes for 20 × 24 px")


def test_psnr_and_codes_used_say_which_grid_they_describe(page: Any) -> None:
    upload = upload_gradient(page)
    assert page.locator("#used-label").inner_text() == "Codes used (original grid)"
    assert page.locator("#psnr-edited-row").is_hidden()
    reported = page.evaluate("() => state.result.psnr")
    # the page's own PSNR of the untouched grid's decode is /reconstruct's: one definition for both figures
    unedited = page.evaluate("() => state.psnrEdited")
    assert abs(unedited - reported) < 0.05

    click_cell(page, 5, 5)
    code = (page.evaluate("() => state.result.indices[5][5]") + 31) % 64
    page.fill("#code", str(code))
    page.click("#apply")
    wait_decodes(page, 2)
    assert page.locator("#used-label").inner_text() == "Codes used (edited grid)"
    assert page.locator("#psnr-edited-row").is_visible()
    assert float(page.locator("#stat-psnr").inner_text().split()[0]) == pytest.approx(reported, abs=0.01)
    shown = float(page.locator("#stat-psnr-edited").inner_text().split()[0])
    # recomputed here from the edited decode on the canvas and the uploaded PNG
    error = (canvas_rgb(page, "edited") - png_pixels(upload)).astype(np.float64)
    expected = 10 * np.log10(255**2 / (error**2).mean())
    assert shown == pytest.approx(expected, abs=0.01)
    assert page.evaluate("() => state.psnrEdited") != unedited, "an edited cell did not change the PSNR"
    cells = np.array(page.evaluate("() => state.edited"))
    used = page.locator("#stat-used").inner_text()
    assert used.startswith(f"{len(np.unique(cells))} of 64"), used


def test_downloads_are_the_reconstruction_and_the_edited_codes(page: Any, server: str, tmp_path: Path) -> None:
    upload = upload_gradient(page)
    click_cell(page, 2, 3)
    page.fill("#code", "17")
    page.click("#apply")
    wait_decodes(page, 2)
    edited = np.array(page.evaluate("() => state.edited"))
    assert edited[2, 3] == 17

    def download(button: str) -> Path:
        with page.expect_download() as info:
            page.click(button)
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        return path

    reconstruction = download("#download-reconstruction")
    assert reconstruction.name == "gradient-default-reconstruction.png"
    served = httpx.post(f"{server}/reconstruct", content=upload, headers={"content-type": "image/png"}, timeout=30)
    assert np.array_equal(png_pixels(reconstruction.read_bytes()), png_pixels(served.content))

    npy = download("#download-npy")
    assert npy.name == "gradient-default-codes-edited.npy"
    with npy.open("rb") as handle:
        assert np.lib.format.read_magic(handle) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    assert (shape, fortran, dtype) == (edited.shape, False, np.dtype("<i4"))
    codes = np.load(npy, allow_pickle=False)
    assert codes.flags.c_contiguous
    assert np.array_equal(codes, edited)

    # the JSON is a /decode body: posted back, it decodes to the picture the page shows and offers
    body = json.loads(download("#download-json").read_text())
    assert body == {"indices": edited.tolist(), "image_size": [38, 50]}
    decoded = httpx.post(f"{server}/decode", json=body, headers={"accept": "image/png"}, timeout=30)
    assert decoded.status_code == 200, decoded.text
    picture = download("#download-decoded")
    assert picture.name == "gradient-default-codes-edited-decoded.png"
    assert np.array_equal(png_pixels(picture.read_bytes()), png_pixels(decoded.content))
    assert np.abs(canvas_rgb(page, "edited") - png_pixels(decoded.content)).max() <= 2


# ------------------------------------------------------------------------------------------------- issue 17

GENERATED = "() => ['ready', 'error'].includes(document.getElementById('generate').dataset.state)"


def generate_on_page(
    page: Any, *, count: int, seed: str, label: str = "", temperature: str = "1", top_k: str = ""
) -> None:
    """Fill the Generate panel of the selected model, click Generate and wait until the last sample (or an
    error) is in."""
    page.select_option("#gen-label", label)
    page.fill("#gen-temperature", temperature)
    page.fill("#gen-top-k", top_k)
    page.fill("#gen-seed", seed)
    page.fill("#gen-count", str(count))
    page.evaluate("() => { document.getElementById('generate').dataset.state = 'idle'; }")
    page.click("#generate-button")
    page.wait_for_function(GENERATED)


# at each sample added to the grid: how many /generate replies the page had by then (resource timing)
WATCH_SAMPLES = """() => {
  window.replies = [];
  const count = () => performance.getEntriesByType("resource").filter((e) => e.name.includes("/generate")).length;
  new MutationObserver((changes) => {
    for (const change of changes) for (const _ of change.addedNodes) window.replies.push(count());
  }).observe(document.getElementById("gen-samples"), { childList: true });
}"""


def b64_pixels(text: str) -> np.ndarray:
    return png_pixels(base64.b64decode(text))


def test_generate_panel_is_shown_for_a_prior_and_draws_what_the_api_draws(page: Any, server: str) -> None:
    assert page.locator("#model").input_value() == "default"
    assert page.locator("#generate").is_hidden(), "a model without a prior shows the Generate panel"
    page.select_option("#model", "digits")
    assert page.locator("#generate").is_visible()
    labels = page.eval_on_selector_all("#gen-label option", "options => options.map(o => [o.value, o.text])")
    assert labels == [["", "any"]] + [[str(k), str(k)] for k in range(10)]

    requests: list[dict[str, Any]] = []
    page.on("request", lambda r: "/generate" in r.url and requests.append(json.loads(r.post_data or "{}")))
    page.evaluate(WATCH_SAMPLES)
    generate_on_page(page, count=5, seed="1234", label="3", temperature="0.8", top_k="20")
    # each sample was shown as its reply came in, not all of them at the end: the replies counted at each addition
    # rise by one (whether a reply's timing entry lands just before or just after its sample shows)
    replies = page.evaluate("() => window.replies")
    assert len(replies) == 5, replies
    assert all(b - a == 1 for a, b in zip(replies, replies[1:], strict=False)), replies
    assert page.locator("#generate").get_attribute("data-state") == "ready"
    assert page.locator("#gen-samples img").count() == 5
    assert page.locator("#gen-samples").get_attribute("data-count") == "5"
    assert "Drew 5 samples of label 3 with seed 1234" in page.locator("#gen-status").inner_text()
    # one request per sample, so each one shows as it is drawn; the seed's sequence split by first_sample
    assert [(r["count"], r["first_sample"], r["seed"]) for r in requests] == [(1, b, 1234) for b in range(5)]

    shown = page.evaluate("() => state.generated")
    direct = httpx.post(
        f"{server}/generate?model=digits",
        json={"count": 5, "label": 3, "temperature": 0.8, "top_k": 20, "seed": 1234},
        headers={"accept": "application/json"},
        timeout=60,
    )
    assert direct.status_code == 200, direct.text
    expected = direct.json()
    assert shown["seed"] == expected["seed"] == 1234
    assert [s["indices"] for s in shown["samples"]] == [s["indices"] for s in expected["samples"]]
    assert len({json.dumps(s["indices"]) for s in shown["samples"]}) == 5, "the samples are all alike"
    # and the pictures the page shows are the decodes the API returns
    for b, sample in enumerate(expected["samples"]):
        src = page.locator("#gen-samples img").nth(b).get_attribute("src")
        assert np.array_equal(b64_pixels(src.removeprefix("data:image/png;base64,")), b64_pixels(sample["image"]))

    # no seed given: the service picks one, and every sample of the run uses it
    requests.clear()
    generate_on_page(page, count=2, seed="")
    assert page.locator("#gen-samples img").count() == 2
    seed = page.evaluate("() => state.generated.seed")
    assert "seed" not in requests[0]
    assert requests[1]["seed"] == seed

    # another model without a prior: the panel and its samples go
    page.select_option("#model", "default")
    assert page.locator("#generate").is_hidden()
    assert page.locator("#gen-samples img").count() == 0
    assert page.evaluate("() => state.generated") is None


def painted_mask(page: Any) -> list[list[int]]:
    h, w = page.evaluate("() => state.result.shape")
    flat = page.evaluate("() => Array.from(state.painted)")
    return [flat[r * w : (r + 1) * w] for r in range(h)]


def test_a_sample_opens_in_the_editor_and_complete_redraws_only_the_painted_cells(page: Any, server: str) -> None:
    page.select_option("#model", "digits")
    generate_on_page(page, count=2, seed="7", label="4")
    sample = page.evaluate("() => state.generated.samples[1]")
    page.locator("#gen-samples button").nth(1).click()
    wait_decodes(page, 1)
    assert page.evaluate("() => state.result.indices") == sample["indices"]
    assert page.locator("#reconstruction-source").inner_text() == "(/generate)"
    assert "generated sample" in page.locator("#stat-psnr").inner_text()
    # the untouched grid's /decode is the sample's own picture
    assert np.abs(canvas_rgb(page, "edited") - b64_pixels(sample["image"])).max() <= 2

    # paint a 3x3 region, then let the prior redraw it with the panel's label and seed
    page.check("input[name=tool][value=paint]")
    page.select_option("#brush", "3")
    page.fill("#code", "0")
    click_cell(page, 3, 3)
    wait_decodes(page, 2)
    mask = painted_mask(page)
    assert sum(map(sum, mask)) == 9
    assert all(mask[r][c] == (2 <= r <= 4 and 2 <= c <= 4) for r in range(7) for c in range(7))
    before = page.evaluate("() => state.edited")
    page.select_option("#gen-label", "6")
    page.fill("#gen-temperature", "0.9")
    page.fill("#gen-top-k", "")
    page.fill("#gen-seed", "99")
    assert page.is_enabled("#complete")
    assert "Redraw 9 cells" in (page.locator("#complete").get_attribute("title") or "")
    page.click("#complete")
    wait_decodes(page, 3)
    after = np.array(page.evaluate("() => state.edited"))

    direct = httpx.post(
        f"{server}/complete?model=digits",
        json={"indices": before, "mask": mask, "label": 6, "temperature": 0.9, "seed": 99},
        headers={"accept": "application/json"},
        timeout=60,
    )
    assert direct.status_code == 200, direct.text
    assert np.array_equal(after, np.array(direct.json()["samples"][0]["indices"]))
    keep = np.array(mask) == 0
    assert np.array_equal(after[keep], np.array(before)[keep]), "an unpainted cell changed"
    assert (after[~keep] != 0).any(), "the prior left the painted region as painted"
    assert "complete" in page.locator("#stat-time").inner_text()
    assert "Last completion: seed 99." in page.locator("#edit-info").inner_text()
    # the decode shown is of the completed grid
    decoded = httpx.post(
        f"{server}/decode?model=digits", json={"indices": after.tolist()}, headers={"accept": "image/png"}, timeout=30
    )
    assert np.abs(canvas_rgb(page, "edited") - png_pixels(decoded.content)).max() <= 2

    # a model without a prior: the action is there but off, and says why
    page.select_option("#model", "default")
    upload_gradient(page)
    assert page.is_disabled("#complete")
    assert "no prior" in (page.locator("#complete").get_attribute("title") or "")


def test_a_failed_generate_or_complete_shows_the_error_and_no_stale_samples(page: Any) -> None:
    page.select_option("#model", "digits")
    generate_on_page(page, count=2, seed="1")
    assert page.locator("#gen-samples img").count() == 2
    generate_on_page(page, count=3, seed="1", temperature="1000")  # the service allows 0.001 .. 100: 422
    assert page.locator("#generate").get_attribute("data-state") == "error"
    message = page.locator("#gen-error").inner_text()
    assert "HTTP 422" in message, message
    assert "temperature" in message, message
    assert page.locator("#gen-samples img").count() == 0, "samples of the earlier draw stay under the error"
    assert page.evaluate("() => state.generated") is None
    # the next good draw clears the message
    generate_on_page(page, count=1, seed="2")
    assert page.locator("#gen-error").is_hidden()
    assert page.locator("#gen-samples img").count() == 1

    # a failed completion: said next to the editor; the grid and its decode stay as they were
    page.click("button[data-sample='samples/digit-7.png']")
    wait_decodes(page, 1)
    click_cell(page, 2, 2)
    grid = page.evaluate("() => state.edited")
    page.fill("#gen-temperature", "1000")
    page.click("#complete")
    page.wait_for_function("() => document.body.dataset.state === 'error'")
    assert "HTTP 422" in page.locator("#edit-error").inner_text()
    assert page.evaluate("() => state.edited") == grid
    assert page.locator("#results").is_visible()
    page.problems[:] = [p for p in page.problems if "status of 4" not in p[1]]
