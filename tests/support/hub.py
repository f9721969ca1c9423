"""A Hugging Face Hub cache populated by the test, in the cache's own layout, for the offline Hub-id tests.

This machine cannot reach the Hub. `add_snapshot` writes what `hf download` would have left in `HF_HUB_CACHE`:
`models--org--name/blobs/<sha256>` (the files), `snapshots/<commit>/<path>` (relative symlinks to the blobs) and
`refs/<ref>` (the commit a branch or tag points at), so that huggingface_hub's own resolution
(`hf_hub_download` in offline mode) finds them as it would find a real download.

`offline_env` is the environment of a subprocess that uses the cache; `offline_in_process` points the
huggingface_hub already imported by the test process at it (it reads `HF_HUB_CACHE` and `HF_HUB_OFFLINE` once, at
import, into `huggingface_hub.constants`, which its functions read at each call).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest


def repo_folder(cache: Path, repo: str) -> Path:
    """`HF_HUB_CACHE/models--org--name`, huggingface_hub's folder for the model repo `org/name`."""
    return cache / ("models--" + repo.replace("/", "--"))


def fake_commit(label: str) -> str:
    """A 40-hex commit hash (huggingface_hub takes only those as commits), derived from `label`."""
    return hashlib.sha1(label.encode()).hexdigest()


def add_snapshot(
    cache: Path,
    repo: str,
    commit: str,
    checkpoint: Path,
    subfolder: str | None = None,
    refs: Iterable[str] = (),
    files: Iterable[str] | None = None,
) -> Path:
    """Put the files of the checkpoint directory `checkpoint` (all, or those named in `files`) into the cache as
    `repo` at `commit`, under `subfolder`; point each of `refs` at the commit. Returns the snapshot directory."""
    folder = repo_folder(cache, repo)
    snapshot = folder / "snapshots" / commit
    target = snapshot / subfolder if subfolder else snapshot
    target.mkdir(parents=True, exist_ok=True)
    (folder / "blobs").mkdir(exist_ok=True)
    names = sorted(p.name for p in checkpoint.iterdir() if p.is_file()) if files is None else list(files)
    for name in names:
        data = (checkpoint / name).read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = target / name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, target))
    for ref in refs:
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def offline_env(hf_home: Path) -> dict[str, str]:
    """The variables that make a subprocess use only the cache under `hf_home` (`hf_home/hub`), offline: both
    `HF_HOME` and `HF_HUB_CACHE` (which would win over it were the test runner's set)."""
    return {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1"}


def offline_in_process(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> Path:
    """Point this process's huggingface_hub at the cache under `hf_home`, offline; returns the cache (`hub/`)."""
    from huggingface_hub import constants

    cache = hf_home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def copy_checkpoint(checkpoint: Path, destination: Path) -> Path:
    """A copy of a checkpoint directory (for a local directory that shadows a repo id)."""
    shutil.copytree(checkpoint, destination)
    return destination
