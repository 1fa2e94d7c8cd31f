"""The code base stays ruff-clean and passes mypy --strict."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import load_script

ROOT = Path(__file__).resolve().parent.parent
# The one helper that lays the package out for mypy (README: Development).
typecheck = load_script("typecheck", ROOT / "scripts" / "typecheck.py")
# Folders mapped into the import package (pyproject's package-dir), by part: the name
# under dispatchlet ("" for the package itself).
PACKAGE_DIRS = {
    name.removeprefix(typecheck.PACKAGE).lstrip("."): folder
    for name, folder in typecheck.package_dirs().items()
}


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


def test_the_type_checking_tree_lays_out_the_package_as_installed(tmp_path: Path) -> None:
    """mypy checks the tree scripts/typecheck.py makes: each package in it is the folder
    Python imports it from, once installed."""
    tree = typecheck.link_tree(tmp_path)
    for part, folder in PACKAGE_DIRS.items():
        name = f"dispatchlet.{part}" if part else "dispatchlet"
        module = importlib.import_module(name)
        assert module.__file__ is not None
        installed = Path(module.__file__).resolve()
        assert installed == (folder / "__init__.py").resolve(), name
        laid_out = tree.joinpath(*name.split("."), "__init__.py")
        assert laid_out.resolve() == installed, name
    # Made again in the same place, as an editor's tree is after a pull.
    assert typecheck.link_tree(tmp_path) == tmp_path
    assert (tmp_path / "dispatchlet" / "core" / "endpoint.py").is_file()


def test_the_type_checking_tree_is_never_made_over_other_files(tmp_path: Path) -> None:
    (tmp_path / "dispatchlet").mkdir()
    (tmp_path / "dispatchlet" / "mine.py").write_text("")
    with pytest.raises(SystemExit, match="not a link"):
        typecheck.link_tree(tmp_path)
    assert (tmp_path / "dispatchlet" / "mine.py").is_file()


@pytest.mark.slow
def test_mypy_strict() -> None:
    """The command contributors run (README: Development)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "typecheck.py")],
        cwd=ROOT,
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
    assert set(PACKAGE_DIRS) == set(ALLOWED_IMPORTS), "each mapped folder needs its rule"
    problems = []
    for part, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/dispatch/" in relative or relative in ENTRY_POINTS:
                continue  # generated protobuf modules; the command-line entry point
            inner = path.parent.relative_to(folder).parts
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
