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


class LocalHub:
    """A server on 127.0.0.1 that speaks the part of the Hub's HTTP protocol huggingface_hub downloads through, for
    the online tests (`HF_ENDPOINT=hub.url`): `HEAD`/`GET /{repo}/resolve/{revision}/{path}` (the file, with the
    `X-Repo-Commit` and `ETag` headers `hf_hub_download` reads), and for `hf download`'s listing `GET
    /api/models/{repo}/revision/{revision}` and `GET /api/models/{repo}/tree/{commit}`. Unknown repos, revisions
    and files are answered 404 with the Hub's `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`);
    a repo in `private` is answered 401 with `RepoNotFound` (as the Hub answers) unless the request carries its token.
    `downloads` records the `GET` of each file, so that a test sees what was fetched.

    `repos` maps a repo id to its commits (`{commit: {path: bytes}}`), `refs` a repo id to `{branch or tag: commit}`.
    """

    def __init__(
        self,
        repos: dict[str, dict[str, dict[str, bytes]]],
        refs: dict[str, dict[str, str]],
        private: dict[str, str] | None = None,
    ) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.repos, self.refs, self.private = repos, refs, private or {}
        self.downloads: list[str] = []  # "org/name@commit:path" per file GET
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def commit_of(self, repo: str, revision: str) -> str | None:
        commits = self.repos.get(repo, {})
        commit = revision if revision in commits else self.refs.get(repo, {}).get(revision)
        return commit if commit in commits else None

    def _handler(self) -> type:
        import json
        from http.server import BaseHTTPRequestHandler
        from urllib.parse import unquote, urlsplit

        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads `downloads`
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
                self._resolve(send_body=False)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/api/models/"):
                    self._api()
                else:
                    self._resolve(send_body=True)

            def _fail(self, code: str, status: int = 404) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Type", "application/json")
                body = json.dumps({"error": code}).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, payload: object) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _commit(self, repo: str, revision: str) -> str | None:
                token = hub.private.get(repo)
                if repo not in hub.repos or (token and self.headers.get("authorization") != f"Bearer {token}"):
                    self._fail("RepoNotFound", 401 if token else 404)
                    return None
                commit = hub.commit_of(repo, revision)
                if commit is None:
                    self._fail("RevisionNotFound")
                return commit

            def _resolve(self, send_body: bool) -> None:
                org, name, verb, revision, *path = urlsplit(self.path).path.lstrip("/").split("/")
                repo, filename = f"{org}/{name}", unquote("/".join(path))
                if verb != "resolve" or (commit := self._commit(repo, unquote(revision))) is None:
                    return
                data = hub.repos[repo][commit].get(filename)
                if data is None:
                    self._fail("EntryNotFound")
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if send_body:
                    hub.downloads.append(f"{repo}@{commit}:{filename}")
                    self.wfile.write(data)

            def _api(self) -> None:
                _, _, org, name, verb, revision, *_ = urlsplit(self.path).path.lstrip("/").split("/")
                repo = f"{org}/{name}"
                if (commit := self._commit(repo, unquote(revision))) is None:
                    return
                files = hub.repos[repo][commit]
                if verb == "revision":
                    self._json({"id": repo, "sha": commit, "siblings": [{"rfilename": p} for p in sorted(files)]})
                else:  # tree, recursive
                    self._json(
                        [
                            {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                            for p, d in sorted(files.items())
                        ]
                    )

        return Handler


def checkpoint_files(checkpoint: Path, subfolder: str | None = None) -> dict[str, bytes]:
    """The files of a checkpoint directory as a repo's `{path: bytes}`, under `subfolder`."""
    prefix = f"{subfolder}/" if subfolder else ""
    return {prefix + p.name: p.read_bytes() for p in sorted(checkpoint.iterdir()) if p.is_file()}
