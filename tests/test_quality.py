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
PACKAGE_DIRS = {
    "": "api",
    "core": "core",
    "adapters": "adapters",
    "proto": "proto",
    "cli": "cli",
    "scheduler": "scheduler",
    "client": "client",
}
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


# What each part may import (DESIGN.md, "Layout as it grows"): dependencies point down.
# proto (the wire schema) is a leaf everyone may use; the root package re-exports.
ALLOWED_IMPORTS = {
    "core": {"core", "proto"},
    "proto": {"proto"},
    "adapters": {"adapters", "core", "proto"},
    "client": {"client", "core", "proto"},
    "scheduler": {"scheduler", "core", "proto"},
    "cli": {"cli", "core", "proto", "adapters", "client", "scheduler"},
    "": {"", "core", "proto", "adapters", "client", "scheduler"},
}
# `python -m dispatchlet` is the command line itself.
ENTRY_POINTS = {"api/__main__.py"}


def imported_parts(path: Path, package: list[str]) -> set[str]:
    """The parts of dispatchlet (the first name under it) that the module at ``path``,
    in the package ``package`` (e.g. ["dispatchlet", "core"]), imports."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[: len(package) - node.level + 1])
            if node.module:
                names = [f"{base}.{node.module}"]
            else:
                names = [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "dispatchlet":
                found.add(pieces[1] if len(pieces) > 1 else "")
    return found


def test_dependencies_point_down() -> None:
    problems = []
    for part, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/dispatch/" in relative or relative in ENTRY_POINTS:
                continue  # generated protobuf modules; the command-line entry point
            inner = path.parent.relative_to(ROOT / folder).parts
            package = ["dispatchlet", *([part] if part else []), *inner]
            for imported in imported_parts(path, package) - ALLOWED_IMPORTS[part]:
                problems.append(f"{relative} imports dispatchlet.{imported or '(root)'}")
    assert problems == []


def test_the_dependency_check_sees_a_violation(tmp_path: Path) -> None:
    offender = tmp_path / "module.py"
    offender.write_text(
        "from ..cli import main\nfrom . import errors\nfrom ..adapters import wsgi\n"
        "import dispatchlet.scheduler.engine\nimport json\n"
    )
    found = imported_parts(offender, ["dispatchlet", "core"])
    assert found == {"cli", "core", "adapters", "scheduler"}
