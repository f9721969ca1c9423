"""A `.dockerignore` matcher with Docker's rules, so tests can see the build context the image gets.

Docker (moby's patternmatcher) tests each path against every pattern in order and the last match wins; a
pattern also matches everything under a directory it matches; `!` re-includes; `*` and `?` stay within one
path segment and `**` spans any number of them.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path


def _to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


@dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[str, re.Pattern[str], bool], ...]  # (cleaned pattern, its regex, is an exception)

    @classmethod
    def from_file(cls, path: Path) -> DockerIgnore:
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            line = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((line, _to_regex(line), exception))
        return cls(tuple(rules))

    def included(self, relpath: str) -> bool:
        """Whether a file (POSIX path relative to the context root) is sent to the builder."""
        parts = relpath.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for _, regex, exception in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not exception
        return not excluded

    def copy_context(self, src: Path, dst: Path) -> list[str]:
        """Copy the files of `src` that the build context would hold into `dst`; their relative paths."""
        copied = []
        for dirpath, dirnames, filenames in os.walk(src):
            rel_dir = Path(dirpath).relative_to(src).as_posix()
            prefix = "" if rel_dir == "." else rel_dir + "/"
            # skip whole excluded trees (.venv, .git) unless an exception rule could re-include something inside
            dirnames[:] = sorted(d for d in dirnames if self.included(prefix + d) or self._reopens(prefix + d))
            for name in sorted(filenames):
                rel = prefix + name
                path = Path(dirpath) / name
                if not path.is_symlink() and self.included(rel):
                    target = dst / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
                    copied.append(rel)
        return copied

    def _reopens(self, reldir: str) -> bool:
        return any(exception and (raw.startswith(reldir + "/") or "**" in raw) for raw, _, exception in self.rules)
