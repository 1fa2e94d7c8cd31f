"""The code base stays ruff-clean and passes mypy --strict."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["api", "core", "adapters", "cli", "examples", "bench", "scripts"]


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


@pytest.mark.slow
def test_mypy_strict() -> None:
    run(sys.executable, "-m", "mypy", *[d for d in CHECKED if (ROOT / d).exists()])
