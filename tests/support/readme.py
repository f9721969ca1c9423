"""README.md's examples as data, and how to run one as a user would, against a server on 127.0.0.1.

Every fenced ```bash and ```python block of README.md is an example. One that cannot run in the test suite (it
starts a server, needs Docker) has a `<!-- not run: why -->` line right above its fence; every other block must run
as written. `run_example` runs one in `workdir` (the examples share it, in README order: the first ones make the
files the later ones read) with the shared virtual environment's `python`, `vqserve` and its packages first on the
PATH, as after `. .venv/bin/activate`. The only rewrite: the port of `localhost:8000` / `127.0.0.1:8000` becomes the
test server's, and `VQSERVE_URL` (the `vqserve` CLI's server) is set to it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.constants import ROOT

README = ROOT / "README.md"
LANGUAGES = ("bash", "python")
_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<why>.+?)\s*-->\s*$")
_ADDRESS = re.compile(r"\b(localhost|127\.0\.0\.1):8000\b")


@dataclass(frozen=True)
class Example:
    language: str  # bash | python
    code: str
    line: int  # of the opening fence, 1-based
    not_run: str | None  # the marker's reason, or None: the block must run

    @property
    def name(self) -> str:
        return f"README.md:{self.line}-{self.language}"


def examples(text: str | None = None) -> list[Example]:
    """Every ```bash / ```python block of README.md (or `text`), in order, with its `not run` marker if any."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start, language = i, fence.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        if language in LANGUAGES:
            marker = _NOT_RUN.match(lines[start - 1]) if start > 0 else None
            code = "\n".join(lines[start + 1 : end]) + "\n"
            found.append(Example(language, code, start + 1, marker.group("why") if marker else None))
        i = end + 1
    return found


def for_server(code: str, port: int) -> str:
    """`code` with `localhost:8000` / `127.0.0.1:8000` pointed at the test server's port (the only rewrite)."""
    return _ADDRESS.sub(lambda m: f"{m.group(1)}:{port}", code)


def example_environment(url: str) -> dict[str, str]:
    """The environment of an activated virtual environment in a checkout: its bin first on the PATH, the checkout
    importable, `VQSERVE_URL` at the test server."""
    venv_bin = str(Path(sys.executable).parent)
    env = {key: value for key, value in os.environ.items() if not key.startswith("VQSERVE_")}
    env.update(
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        VQSERVE_URL=url,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def prepare_workdir(workdir: Path) -> None:
    """A scratch directory that reads like the repository root for what the examples read (`model/weights/...`),
    while what they write stays in it."""
    link = workdir / "model"
    if not link.exists():
        link.symlink_to(ROOT / "model", target_is_directory=True)


def run_example(example: Example, workdir: Path, url: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run `example` in `workdir` against the server at `url` (http://127.0.0.1:PORT): bash with `-e -o pipefail`
    (any failing command fails the example), Python as a script; stdout and stderr captured."""
    port = int(url.rsplit(":", 1)[1])
    code = for_server(example.code, port)
    interpreter = ["bash", "-e", "-o", "pipefail", "-c"] if example.language == "bash" else [sys.executable, "-c"]
    command = [*interpreter, code]
    env = example_environment(url)
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
