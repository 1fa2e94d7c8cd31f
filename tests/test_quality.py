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
    "serving": "serving",
    "scheduler": "scheduler",
    "client": "client",
}
# Checked one folder at a time: deploy recipes each have a module named like the others'.
MYPY_SCRIPTS = [
    "examples",
    "bench",
    "scripts",
    "deploy/wsgi",
    "deploy/cloud_functions",
    "deploy/aws",
]


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
    folders = [[d] for d in MYPY_SCRIPTS if (ROOT / d).exists()]
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
    "serving": {"serving", "core", "proto", "adapters"},
    "cli": {"cli", "core", "proto", "adapters", "client", "scheduler", "serving"},
    "": {"", "core", "proto", "adapters", "client", "scheduler"},
}
# `python -m dispatchlet` is the command line itself.
ENTRY_POINTS = {"api/__main__.py"}
# Code outside the package (deploy recipes and tools, examples, benchmarks, helper
# scripts) uses it as users do: any part but the command line, whose modules are internal.
SCRIPTS = ["deploy", "examples", "bench", "scripts"]
SCRIPTS_MAY_NOT_IMPORT = {"cli"}


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
        elif isinstance(node, ast.ImportFrom) and node.module == "dispatchlet":
            # `from dispatchlet import cli` imports that part; `import Endpoint`, the root.
            names = ["dispatchlet", *(f"dispatchlet.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "dispatchlet":
                part = pieces[1] if len(pieces) > 1 else ""
                found.add(part if part in ALLOWED_IMPORTS else "")
    return found


def script_problems(root: Path) -> list[str]:
    """The scripts under ``root``'s SCRIPTS folders that import a part they may not."""
    problems = []
    for folder in SCRIPTS:
        for path in sorted((root / folder).rglob("*.py")):
            for imported in sorted(imported_parts(path, []) & SCRIPTS_MAY_NOT_IMPORT):
                problems.append(
                    f"{path.relative_to(root).as_posix()} imports dispatchlet.{imported}"
                )
    return problems


def test_dependencies_point_down() -> None:
    problems = []
    for part, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/dispatch/" in relative or relative in ENTRY_POINTS:
                continue  # generated protobuf modules; the command-line entry point
            inner = path.parent.relative_to(ROOT / folder).parts
            package = ["dispatchlet", *part.split("."), *inner] if part else ["dispatchlet", *inner]
            for imported in imported_parts(path, package) - ALLOWED_IMPORTS[part]:
                problems.append(f"{relative} imports dispatchlet.{imported or '(root)'}")
    assert problems + script_problems(ROOT) == []


def test_the_dependency_check_sees_a_violation(tmp_path: Path) -> None:
    offender = tmp_path / "module.py"
    offender.write_text(
        "from ..cli import main\nfrom . import errors\nfrom ..adapters import wsgi\n"
        "import dispatchlet.scheduler.engine\nimport json\n"
    )
    found = imported_parts(offender, ["dispatchlet", "core"])
    assert found == {"cli", "core", "adapters", "scheduler"}


def test_the_dependency_check_sees_a_script_importing_the_command_line(tmp_path: Path) -> None:
    launcher = tmp_path / "deploy" / "wsgi" / "launcher.py"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(
        "from dispatchlet.cli.local_server import load_app\n"
        "from dispatchlet.serving.waitress_server import waitress_options\n"
    )
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "app.py").write_text(
        "from dispatchlet import Endpoint, cli\nfrom dispatchlet.adapters.wsgi import wsgi_app\n"
    )
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "fine.py").write_text("import dispatchlet.serving.app_loading\n")
    assert script_problems(tmp_path) == [
        "deploy/wsgi/launcher.py imports dispatchlet.cli",
        "examples/app.py imports dispatchlet.cli",
    ]
