"""Constants several test packages share: where the checkout and its shipped weights are, and common headers."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/support/constants.py -> the repository root
WEIGHTS = ROOT / "model" / "weights"  # the shipped checkpoints (`default`, `digits`)
PNG = {"content-type": "image/png"}  # the header of a request whose body is one PNG file
