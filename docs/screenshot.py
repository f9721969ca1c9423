"""Remake `docs/web-page.png` and `docs/web-page-generate.png`, the README's pictures of the web page, with the
shipped models.

`python -m docs.screenshot` serves the shipped checkpoints on 127.0.0.1 (a real `python -m service`) and opens the
page in Debian's Chromium through Playwright. First picture: it reconstructs the astronaut sample with the default
model, paints a band of one code and hovers a cell of the code map, then saves the results card. Second: with the
digits model (which has a prior) it draws 16 samples of one label in the Generate panel, opens one in the editor,
paints a 3x3 region over it and lets the prior complete it, then saves the panel and the results card. Run it again
whenever a shipped checkpoint or the page changes, so that the pictures show what a user gets.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.support.constants import ROOT, WEIGHTS
from tests.support.servers import serving
from tests.web.page import ARGS, CHROMIUM, DECODED, MODELS_LISTED


def serve_args() -> list[str]:
    """`python -m service` flags serving the shipped checkpoints, as the page offers them."""
    return ["--models", f"default={WEIGHTS / 'default'},digits={WEIGHTS / 'digits'}", "--no-warmup"]


def capture(browser: Any, url: str, out: Path, code: int) -> None:
    """Drive the page at `url` in `browser` (a Playwright browser) and save its results card to `out`."""
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    try:
        page.set_default_timeout(120_000)
        page.goto(url + "/")
        page.wait_for_function(MODELS_LISTED)
        page.click("button[data-sample='samples/astronaut.png']")
        page.wait_for_function(DECODED, arg="1")

        # a band of one code across the face, painted with the 5x5 brush
        page.check("input[name=tool][value=paint]")
        page.select_option("#brush", "5")
        page.fill("#code", str(code))
        page.locator("#codemap").scroll_into_view_if_needed()
        box = page.locator("#codemap").bounding_box()
        y = box["y"] + box["height"] * 0.3
        page.mouse.move(box["x"] + box["width"] * 0.3, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.65, y, steps=10)
        page.mouse.up()
        page.wait_for_function(DECODED, arg="2")

        # the hover read-out under the map
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6)
        page.wait_for_function("() => document.getElementById('hover').textContent.startsWith('row ')")
        page.locator("#results").screenshot(path=str(out))
    finally:
        page.close()


# the Generate panel and the results card under it, in page coordinates (a clip of a full-page screenshot)
PANEL_AND_RESULTS = """() => {
  const top = document.getElementById("generate").getBoundingClientRect();
  const bottom = document.getElementById("results").getBoundingClientRect();
  return { x: top.left, y: top.top + window.scrollY, width: top.width, height: bottom.bottom - top.top };
}"""


def capture_generate(browser: Any, url: str, out: Path, label: int, seed: int) -> None:
    """Drive the Generate panel and a completion with the digits model's prior and save both cards to `out`."""
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    try:
        page.set_default_timeout(120_000)
        page.goto(url + "/")
        page.wait_for_function(MODELS_LISTED)
        page.select_option("#model", "digits")
        page.select_option("#gen-label", str(label))
        page.fill("#gen-seed", str(seed))
        page.fill("#gen-count", "16")
        page.click("#generate-button")
        page.wait_for_function("() => document.getElementById('generate').dataset.state === 'ready'")

        # the first sample in the editor, a 3x3 region painted over its middle and redrawn by the prior
        page.locator("#gen-samples button").first.click()
        page.wait_for_function(DECODED, arg="1")
        page.check("input[name=tool][value=paint]")
        page.select_option("#brush", "3")
        page.locator("#codemap").scroll_into_view_if_needed()
        box = page.locator("#codemap").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        page.wait_for_function(DECODED, arg="2")
        page.click("#complete")
        page.wait_for_function(DECODED, arg="3")
        page.screenshot(path=str(out), full_page=True, clip=page.evaluate(PANEL_AND_RESULTS))
    finally:
        page.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "web-page.png")
    parser.add_argument("--code", type=int, default=1234, help="the code painted as a band")
    parser.add_argument("--generate-out", type=Path, default=ROOT / "docs" / "web-page-generate.png")
    parser.add_argument("--label", type=int, default=3, help="the digit the Generate panel draws")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the Generate panel")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, serving(serve_args(), Path(tmp) / "server.log") as server:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            try:
                capture(browser, server.url, args.out, args.code)
                capture_generate(browser, server.url, args.generate_out, args.label, args.seed)
            finally:
                browser.close()
    print(f"wrote {args.out} and {args.generate_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
