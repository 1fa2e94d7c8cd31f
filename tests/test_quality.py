"""The code base stays ruff-clean and passes mypy --strict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folders mapped into the import package (pyproject's package-dir), by import name.
PACKAGE_DIRS = {"": "api", "core": "core", "adapters": "adapters", "proto": "proto", "cli": "cli"}
# Checked one folder at a time: deploy recipes each have a module named like the others'.
SCRIPTS = ["examples", "bench", "scripts", "deploy/wsgi", "deploy/cloud_functions", "deploy/aws"]


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def run(*command: str) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ruff_check() -> None:
    run(tool("ruff"), "check", ".")


@pytest.mark.slow
def test_ruff_format() -> None:
    run(tool("ruff"), "format", "--check", ".")


def package_tree(root: Path) -> Path:
    """The import package laid out as installed, made of links to the source folders.

    mypy cannot follow setuptools' package-dir mapping, so it checks this tree instead.
    """
    package = root / "dispatchlet"
    package.mkdir()
    for entry in (ROOT / PACKAGE_DIRS[""]).iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in PACKAGE_DIRS.items():
        if name:
            (package / name).symlink_to(ROOT / folder)
    return root


@pytest.mark.slow
def test_mypy_strict(tmp_path: Path) -> None:
    tree = package_tree(tmp_path)
    env = {**os.environ, "MYPYPATH": str(tree)}
    folders = [[d] for d in SCRIPTS if (ROOT / d).exists()]
    for target in (["-p", "dispatchlet"], *folders):
        result = subprocess.run(
            [sys.executable, "-m", "mypy", *target],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
