"""The `vqserve` command line against a real server and in-process: both give the same indices, the decoded
PNGs and reconstructions match the model, and the PSNR report is written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from tests.support.constants import ROOT
from tests.support.images import image_bytes, random_rgb
from tests.support.servers import Server


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(image_bytes(random_rgb(32, 32, seed=1)))
    (folder / "sub" / "b.png").write_bytes(image_bytes(random_rgb(32, 32, seed=2)))
    Image.fromarray(random_rgb(24, 40, seed=3)).save(folder / "c.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_encode_remote_equals_in_process(server: Server, image_folder: Path, tmp_path: Path) -> None:
    remote, local = tmp_path / "remote.npz", tmp_path / "local.npz"
    assert (
        main(
            ["encode", str(image_folder), "-o", str(remote), "--url", server.url, "--concurrency", "3"],
        )
        == 0
    )
    assert main(["encode", str(image_folder), "-o", str(local), "--model-path", str(server.checkpoint)]) == 0
    with np.load(remote) as r, np.load(local) as loc:
        assert sorted(r.files) == ["a.png", "c.jpg", "sub/b.png"]
        for key in r.files:
            np.testing.assert_array_equal(r[key], loc[key])
        assert r["c.jpg"].shape == (12, 20)


def test_encode_npy_then_decode(server: Server, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "codes.npy"
    files = [str(image_folder / "a.png"), str(image_folder / "sub" / "b.png")]
    assert main(["encode", *files, "-o", str(out), "--url", server.url]) == 0
    codes = np.load(out)
    assert codes.shape == (2, 16, 16)
    remote_dir, local_dir = tmp_path / "remote", tmp_path / "local"
    assert main(["decode", str(out), "-o", str(remote_dir), "--url", server.url]) == 0
    assert main(["decode", str(out), "-o", str(local_dir), "--model-path", str(server.checkpoint)]) == 0
    names = sorted(p.name for p in remote_dir.iterdir())
    assert names == ["00000.png", "00001.png"]
    for name in names:
        a = np.asarray(Image.open(remote_dir / name)).astype(int)
        b = np.asarray(Image.open(local_dir / name)).astype(int)
        assert a.shape == (32, 32, 3)
        assert np.abs(a - b).max() <= 1


def test_reconstruct_folder_reports_psnr(
    server: Server, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rec"
    assert main(["reconstruct", str(image_folder), "-o", str(out), "--url", server.url]) == 0
    printed = capsys.readouterr().out
    assert "summary: 3 image(s), PSNR mean" in printed
    with (out / "psnr.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == ["a.png", "c.jpg", "sub/b.png"]
    assert all(0 < float(r["psnr_db"]) < 100 for r in rows)
    assert np.asarray(Image.open(out / "c.png")).shape == (24, 40, 3)

    local = tmp_path / "rec-local"
    assert (
        main(
            ["reconstruct", str(image_folder), "-o", str(local), "--model-path", str(server.checkpoint)],
        )
        == 0
    )
    with (local / "psnr.csv").open() as handle:
        local_rows = list(csv.DictReader(handle))
    for r, loc in zip(rows, local_rows, strict=True):
        assert float(r["psnr_db"]) == pytest.approx(float(loc["psnr_db"]), abs=0.05)


def test_info_as_a_module_and_errors(server: Server) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "info", "--url", server.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (info,) = json.loads(run.stdout)
    assert info["codebook_size"] == 64
    assert info["downsample_factor"] == 2
    unreachable = subprocess.run(
        [sys.executable, "-m", "service.cli", "info", "--url", "http://127.0.0.1:9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr


def test_serve_forwards_to_the_server_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["serve", "--help"])
    assert excinfo.value.code == 0
    assert "--max-queue" in capsys.readouterr().out
