"""Type-check the code base with mypy --strict, as the tests do.

Usage: python scripts/typecheck.py [--tree DIR] [--tree-only]

pyproject.toml maps the folders api/, core/, adapters/, ... into the one import package
``dispatchlet`` (setuptools' ``package-dir``). Python follows that mapping once the
project is installed, but mypy and editors read folders, not the installer's mapping: they
see a ``core`` package and no ``dispatchlet``. So this lays the package out as it is
installed, as a tree of symbolic links to those folders (read from pyproject.toml, so a
new mapped folder needs no change here), and runs mypy with that tree on its path: once
on the package, then once on each folder of scripts (they hold modules of the same name,
``deploy.py`` twice).

By default the tree is made in a temporary folder and removed. ``--tree DIR`` makes it
in DIR and keeps it there, to point an editor at it (Pyright and Pylance:
``python.analysis.extraPaths``; mypy: ``MYPYPATH``); ``--tree-only`` makes it and runs
nothing. The links follow the checkout, except that the package's own folder (api/) is
linked file by file, beside its mapped subpackages: make the tree again when a module is
added there or a folder to package-dir.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy, which this script runs, brings tomli to Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dispatchlet"
# Checked one folder at a time: deploy recipes each have a module named like the others'.
SCRIPT_FOLDERS = (
    "examples",
    "bench",
    "scripts",
    "deploy/wsgi",
    "deploy/cloud_functions",
    "deploy/aws",
)


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """pyproject's package-dir: each mapped package's import name and its folder."""
    with (root / "pyproject.toml").open("rb") as file:
        config: dict[str, object] = tomllib.load(file)
    tool = config.get("tool")
    setuptools = tool.get("setuptools") if isinstance(tool, dict) else None
    mapping = setuptools.get("package-dir") if isinstance(setuptools, dict) else None
    if not isinstance(mapping, dict) or PACKAGE not in mapping:
        raise SystemExit(
            f"pyproject.toml maps no folder to {PACKAGE} ([tool.setuptools] package-dir)"
        )
    return {str(name): root / str(folder) for name, folder in mapping.items()}


def link_tree(destination: Path, root: Path = ROOT) -> Path:
    """Lay the import package out in ``destination`` as installed, with links to the
    source folders, and return ``destination`` (the folder to put on mypy's path)."""
    mapping = package_dirs(root)
    top = destination / PACKAGE
    _remove_links(top)
    # Parents first: a package that holds mapped subpackages is a folder of links to its
    # own entries, beside which its subpackages are linked; any other is one link.
    for name in sorted(mapping, key=lambda name: name.count(".")):
        place = destination.joinpath(*name.split("."))
        children = {
            other.rpartition(".")[2] for other in mapping if other.rpartition(".")[0] == name
        }
        if not children:
            _link(place, mapping[name])
            continue
        place.mkdir(parents=True)
        for entry in sorted(mapping[name].iterdir()):
            if entry.name not in children and entry.name != "__pycache__":
                _link(place / entry.name, entry)
    return destination


def _link(place: Path, target: Path) -> None:
    # Relative: a tree kept in the checkout still works once the checkout has moved.
    relative = os.path.relpath(target, place.parent)
    place.symlink_to(relative, target_is_directory=target.is_dir())


def _remove_links(top: Path) -> None:
    """Remove a tree this script made before; refuse to touch anything else."""
    if top.is_symlink():
        top.unlink()
        return
    if not top.exists():
        return
    # Links are not followed: what they point to is never touched.
    walked = list(os.walk(top, topdown=False))
    for folder, folders, files in walked:
        for name in files + folders:
            path = Path(folder, name)
            if not path.is_symlink() and not (name in folders and path.is_dir()):
                raise SystemExit(f"{path} is not a link: {top} was not made by this script")
    for folder, folders, files in walked:
        for name in files + folders:
            path = Path(folder, name)
            if path.is_symlink():
                path.unlink()
            else:
                path.rmdir()
    top.rmdir()


def mypy_targets(root: Path = ROOT) -> list[list[str]]:
    """mypy's command-line targets, one run each: the package, then each script folder."""
    return [["-p", PACKAGE], *([folder] for folder in SCRIPT_FOLDERS if (root / folder).exists())]


def run_mypy(tree: Path, root: Path = ROOT) -> bool:
    """Run mypy on every target with ``tree`` on its path; print what fails."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("MYPYPATH")]))
    env = {**os.environ, "MYPYPATH": path}
    passed = True
    for target in mypy_targets(root):
        result = subprocess.run(
            [sys.executable, "-m", "mypy", *target],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            passed = False
            print(f"mypy {' '.join(target)}: failed", file=sys.stderr)
            print(result.stdout + result.stderr, end="", file=sys.stderr)
        else:
            print(f"mypy {' '.join(target)}: {result.stdout.strip().splitlines()[-1]}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Type-check the code base with mypy --strict.")
    parser.add_argument("--tree", type=Path, help="make the package's link tree here and keep it")
    parser.add_argument("--tree-only", action="store_true", help="make the tree, run nothing")
    args = parser.parse_args(argv)
    if args.tree_only and args.tree is None:
        parser.error("--tree-only needs --tree DIR")
    if args.tree is not None:
        args.tree.mkdir(parents=True, exist_ok=True)
        tree = link_tree(args.tree.resolve())
        print(f"{PACKAGE} laid out in {tree}: put this folder on your editor's or mypy's path")
        return 0 if args.tree_only or run_mypy(tree) else 1
    with tempfile.TemporaryDirectory() as folder:
        return 0 if run_mypy(link_tree(Path(folder))) else 1


if __name__ == "__main__":
    raise SystemExit(main())
