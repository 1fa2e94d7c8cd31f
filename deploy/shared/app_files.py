"""Which files of an app's folder a deploy tool ships: one rule for every packager, the
Lambda package (deploy/aws/lambda_package.py, which the SAM build runs too) and the
Cloud Functions stage (deploy/cloud_functions/deploy.py).

Left out by default, at any depth of the folder:

- databases: the dev loop's SQLite file of call inputs and outputs (``dispatchlet.db``)
  with its ``-wal``, ``-shm`` and ``-journal`` files, and any ``*.db`` or ``*.sqlite*``;
- dotfiles and dot-folders: VCS data (``.git``), ``.env`` files, tool caches, the dev
  loop's state (``.dispatchlet/``);
- virtual environments: ``venv``, and any folder holding a ``pyvenv.cfg``, whatever
  its name;
- caches and build output: ``__pycache__``, ``*.pyc``, ``node_modules``, ``build``,
  ``dist``, ``*.egg-info``.

A pattern (the defaults, a packager's own, ``--exclude``) without a ``/`` matches the
name of a file or folder anywhere; one with a ``/`` matches its path from the app's
folder (``data/*.csv``). Matching is ``fnmatch``'s, ignoring case (``calls.DB`` is a
database too).
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

DEFAULT_EXCLUDES = (
    # Databases: local data, often the inputs and outputs of real calls.
    "*.db",
    "*.db-*",
    "*.sqlite",
    "*.sqlite3",
    "*.sqlite-*",
    "*.sqlite3-*",
    "*-wal",
    "*-shm",
    "*-journal",
    # Dotfiles: VCS data, secrets in .env, caches, .dispatchlet/.
    ".*",
    # Virtual environments (also found by their pyvenv.cfg), caches, build output.
    "venv",
    "__pycache__",
    "*.pyc",
    "node_modules",
    "build",
    "dist",
    "*.egg-info",
)
VENV_MARKER = "pyvenv.cfg"
# How many of the largest files and of the left-out paths a summary names.
SHOWN = 5
SHOWN_LEFT_OUT = 12


@dataclass(frozen=True)
class AppFiles:
    """The files of ``root`` to ship (relative POSIX paths and sizes, sorted by path),
    and what the rules left out (folders end with ``/``)."""

    root: Path
    files: tuple[tuple[str, int], ...]
    left_out: tuple[str, ...]

    @property
    def total_size(self) -> int:
        return sum(size for _, size in self.files)


def excluded(relative: str, patterns: Iterable[str]) -> bool:
    """Whether the file or folder at ``relative`` (POSIX, from the app's folder) matches
    one of ``patterns``."""
    relative = relative.lower()
    name = relative.rpartition("/")[2]
    for pattern in patterns:
        pattern = pattern.strip("/").lower()
        if fnmatchcase(relative if "/" in pattern else name, pattern):
            return True
    return False


def select(
    root: Path,
    exclude: Sequence[str] = (),
    *,
    defaults: Sequence[str] = DEFAULT_EXCLUDES,
    skip: Sequence[Path] = (),
) -> AppFiles:
    """The files of ``root`` left once ``defaults`` and ``exclude`` are applied.

    ``skip`` are folders never shipped whatever their name (the packager's own output,
    when it lies inside the app's folder). Symbolic links are followed, as a copy does;
    a link that leads nowhere, or back into a folder already walked, is left out.
    """
    patterns = [*defaults, *exclude]
    skipped = {path.resolve() for path in skip}
    files: list[tuple[str, int]] = []
    left_out: list[str] = []
    walked: set[Path] = set()

    def walk(folder: Path, prefix: str) -> None:
        real = folder.resolve()
        if real in walked:
            left_out.append(f"{prefix}/")
            return
        walked.add(real)
        for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
            relative = f"{prefix}/{entry.name}" if prefix else entry.name
            path = Path(entry.path)
            if entry.is_dir():
                if (
                    excluded(relative, patterns)
                    or path.resolve() in skipped
                    or (path / VENV_MARKER).is_file()
                ):
                    left_out.append(f"{relative}/")
                else:
                    walk(path, relative)
            elif entry.is_file() and not excluded(relative, patterns):
                files.append((relative, entry.stat().st_size))
            else:
                left_out.append(relative)

    walk(root, "")
    return AppFiles(root=root, files=tuple(files), left_out=tuple(left_out))


def copy(app: AppFiles, target: Path) -> None:
    """Copy the selected files into ``target``, beside what it holds already."""
    for relative, _ in app.files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(app.root / relative, destination)


def size_text(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def describe(app: AppFiles, label: str = "app") -> list[str]:
    """What went in and what was left out, in a few lines for the packager to print."""
    count = len(app.files)
    lines = [
        f"{label}: {count} file{'' if count == 1 else 's'}, {size_text(app.total_size)} "
        f"from {app.root}"
    ]
    largest = sorted(app.files, key=lambda item: (-item[1], item[0]))[:SHOWN]
    if largest:
        named = ", ".join(f"{path} ({size_text(size)})" for path, size in largest)
        lines.append(f"  largest: {named}")
    if app.left_out:
        shown = ", ".join(app.left_out[:SHOWN_LEFT_OUT])
        more = len(app.left_out) - SHOWN_LEFT_OUT
        lines.append(f"  left out: {shown}" + (f" and {more} more" if more > 0 else ""))
    return lines


def add_exclude_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--exclude PATTERN`` option every packager takes, to ``args.exclude``."""
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out the app's files or folders matching PATTERN (a name, or a path "
        "from the app's folder if it holds a /); repeatable. Databases, dotfiles, "
        "virtual environments, caches and build folders are left out already",
    )
