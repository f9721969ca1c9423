"""What drives the web page from Python, shared by the page tests and `docs/screenshot.py`: where Chromium is,
how it is launched, and the waits that say the page is ready and a decode is drawn. No Playwright import here,
so that importing this never fails where Playwright is missing (the tests skip instead)."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("VQSERVE_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# waits: the model list arrived; the n-th decode of the code grid is drawn and nothing is pending
MODELS_LISTED = (
    "() => document.querySelectorAll('#model option').length === 2 && document.body.dataset.state === 'ready'"
)
DECODED = """(n) =>
  document.getElementById("edited").dataset.decodes === n && document.body.dataset.state === "ready"
"""
