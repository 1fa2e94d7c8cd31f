"""The release: `python -m build` makes an sdist and a wheel from the sdist, both pass
`twine check`, and the wheel installed in a fresh virtual environment runs the README's
quick start."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from support import load_script

ROOT = Path(__file__).resolve().parent.parent
app_files = load_script("app_files", ROOT / "deploy" / "shared" / "app_files.py")

# What the wheel is made of, so what the sdist must carry: the protobuf sources beside
# their generated modules and stubs, the typing marker, the README (the long
# description) and the license.
NEEDED = [
    "README.md",
    "LICENSE",
    "pyproject.toml",
    "api/py.typed",
    "proto/dispatch/sdk/v1/function.proto",
    "proto/dispatch/sdk/v1/function_pb2.py",
    "proto/dispatch/sdk/v1/function_pb2.pyi",
    "proto/dispatchlet/workflow/v1/journal.proto",
    "proto/dispatchlet/scheduler/v1/calls.proto",
    "scheduler/dashboard/templates/call.html",
    "scheduler/dashboard/static/dashboard.css",
    "scheduler/dashboard/static/dashboard.js",
]
INSTALLED = [
    "dispatchlet/py.typed",
    "dispatchlet/proto/dispatch/sdk/v1/function.proto",
    "dispatchlet/proto/dispatch/sdk/v1/function_pb2.pyi",
    "dispatchlet/proto/dispatchlet/workflow/v1/journal.proto",
    "dispatchlet/cli/main.py",
    "dispatchlet/scheduler/server.py",
    # The dashboard's templates and assets, read from the installed package.
    "dispatchlet/scheduler/dashboard/templates/base.html",
    "dispatchlet/scheduler/dashboard/templates/calls_live.html",
    "dispatchlet/scheduler/dashboard/static/dashboard.css",
    "dispatchlet/scheduler/dashboard/static/dashboard.js",
]


def run(*command: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{command} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel `python -m build` makes from a clean copy of the checkout
    (the wheel is built from the sdist, as build does by default)."""
    root = tmp_path_factory.mktemp("release")
    source = root / "source"
    app_files.copy(app_files.select(ROOT), source)
    run(sys.executable, "-m", "build", "--outdir", root / "dist", source)
    (sdist,) = (root / "dist").glob("dispatchlet-*.tar.gz")
    (wheel,) = (root / "dist").glob("dispatchlet-*-py3-none-any.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.mark.slow
def test_twine_check_passes(dist: dict[str, Path]) -> None:
    output = run(sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"])
    assert output.count("PASSED") == 2, output


@pytest.mark.slow
def test_the_sdist_carries_what_the_wheel_needs(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    assert not [name for name in NEEDED if name not in names], sorted(names)


@pytest.mark.slow
def test_the_wheel_carries_the_protos_stubs_and_typing_marker(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert not [name for name in INSTALLED if name not in names], sorted(names)
    assert "dispatchlet = dispatchlet.cli.main:main" in scripts


@pytest.mark.slow
def test_the_wheel_in_a_fresh_environment_runs_the_quick_start(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    """As the guides install it before it is on PyPI: the wheel, with an extra."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", f"dispatchlet[gunicorn] @ {dist['wheel'].as_uri()}")
    app = tmp_path / "app"
    app.mkdir()
    (app / "hello.py").write_text((ROOT / "examples" / "hello.py").read_text())

    # The extra came with it, and dispatchlet is the installed one, not this checkout.
    location = run(python, "-c", "import gunicorn, dispatchlet; print(dispatchlet.__file__)")
    assert Path(location.strip()).resolve().is_relative_to(venv.resolve()), location

    output = run(venv / "bin" / "dispatchlet", "dev", "hello.py", "greet_flaky", "World", cwd=app)
    assert '"Hello, World!"' in output.splitlines(), output

    # The dashboard's templates and assets are read from the installed package.
    dashboard = (
        "from dispatchlet.scheduler.dashboard import Dashboard\n"
        "pages = Dashboard(None)\n"
        "print(sorted(pages.assets))\n"
        "print(pages.templates.get_template('login.html').render("
        "viewer=None, count_cap=1, next='/', problem=''))\n"
    )
    output = run(python, "-c", dashboard)
    assert "['dashboard.css', 'dashboard.js']" in output, output
    assert 'type="password"' in output, output
