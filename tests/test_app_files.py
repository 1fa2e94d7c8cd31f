"""What of an app's folder the deploy packagers ship: the Lambda package (which the SAM
build runs) and the Cloud Functions stage leave out, by one shared rule, the dev loop's
database of call inputs and outputs, dotfiles, virtual environments and caches, and
print what went in."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import load_script

ROOT = Path(__file__).resolve().parent.parent
AWS_DIR = ROOT / "deploy" / "aws"
CLOUD_FUNCTIONS_DIR = ROOT / "deploy" / "cloud_functions"

lambda_package = load_script("lambda_package", AWS_DIR / "lambda_package.py")

SHIPPED = {
    "service.py": "from dispatchlet import Endpoint\n\nendpoint = Endpoint()\n",
    "pkg/__init__.py": "",
    "pkg/tools.py": "VALUE = 1\n",
    # The largest file of the app, named in the summary.
    "data/seed.json": "[" + "0, " * 4000 + "0]\n",
    "notes/readme.txt": "kept\n",
}
LEFT_OUT = {
    # The dev loop's SQLite database of call inputs and outputs, and its companions.
    "dispatchlet.db": "SQLite format 3\0 inputs and outputs of real calls",
    "dispatchlet.db-wal": "wal",
    "dispatchlet.db-shm": "shm",
    "dispatchlet.db-journal": "journal",
    "data/cache.sqlite3": "SQLite format 3\0",
    "data/other.sqlite": "SQLite format 3\0",
    # The dev loop's state, secrets, VCS data, tool caches.
    ".dispatchlet/keys/signing-key.pem": "-----BEGIN PRIVATE KEY-----",
    ".env": "DISPATCH_API_KEY=secret",
    ".git/HEAD": "ref: refs/heads/main\n",
    ".mypy_cache/x.json": "{}",
    # Virtual environments: the usual names, and any folder with a pyvenv.cfg.
    ".venv/pyvenv.cfg": "home = /usr/bin\n",
    "venv/lib/site.py": "",
    "myenv/pyvenv.cfg": "home = /usr/bin\n",
    "myenv/lib/python3.12/site-packages/junk.py": "",
    # Caches and build output.
    "__pycache__/service.cpython-312.pyc": "",
    "pkg/__pycache__/tools.cpython-312.pyc": "",
    "node_modules/left-pad/index.js": "",
    "build/lib/service.py": "",
    "dist/app-1.0.tar.gz": "",
    "app.egg-info/PKG-INFO": "",
    # Named by --exclude: a name pattern and a path pattern.
    "notes/draft.csv": "a,b\n",
    "data/private/customers.json": "[]",
}


def write_app(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return write_app(tmp_path / "myapp", {**SHIPPED, **LEFT_OUT})


EXCLUDE = ["*.csv", "data/private"]


def shipped_files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def check_summary(output: str) -> None:
    """The summary names the file count, the total size, the largest file, and the
    database it left out."""
    app_line = next(line for line in output.splitlines() if line.startswith("app: "))
    assert app_line.startswith(f"app: {len(SHIPPED)} files, ")
    assert "KiB" in app_line
    largest = next(line for line in output.splitlines() if "largest:" in line)
    assert largest.split("largest: ")[1].startswith("data/seed.json (")
    left_out = next(line for line in output.splitlines() if "left out:" in line)
    assert "dispatchlet.db" in left_out
    assert ".dispatchlet/" in left_out


def fake_pip(*args: str) -> None:
    """pip as the build calls it, without the network: a wheel of dispatchlet that
    requires nothing, and installs that put a stand-in package in the target."""
    if args[0] == "wheel":
        wheels = Path(args[args.index("--wheel-dir") + 1])
        wheels.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels / "dispatchlet-0.1.0-py3-none-any.whl", "w") as wheel:
            metadata = "Metadata-Version: 2.1\nName: dispatchlet\nVersion: 0.1.0\n"
            wheel.writestr("dispatchlet-0.1.0.dist-info/METADATA", metadata)
        return
    target = Path(args[args.index("--target") + 1])
    (target / "dispatchlet").mkdir(parents=True, exist_ok=True)
    (target / "dispatchlet" / "__init__.py").write_text("")


def test_lambda_package_ships_the_app_without_its_database_state_and_environments(
    app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lambda_package, "_pip", fake_pip)
    monkeypatch.setattr(lambda_package, "bytecode_compiler", lambda *args: None)
    target = tmp_path / "package"
    lambda_package.build(target, app_dir=app, exclude=EXCLUDE)
    assert shipped_files(target) == {*SHIPPED, "dispatchlet/__init__.py"}
    check_summary(capsys.readouterr().out)


def test_lambda_package_leaves_out_its_own_output_inside_the_app(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lambda_package, "_pip", fake_pip)
    monkeypatch.setattr(lambda_package, "bytecode_compiler", lambda *args: None)
    target = app / "out"
    lambda_package.build(target, app_dir=app, exclude=EXCLUDE)
    assert shipped_files(target) == {*SHIPPED, "dispatchlet/__init__.py"}


def test_lambda_package_leaves_out_the_deploy_files_beside_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lambda_package, "_pip", fake_pip)
    monkeypatch.setattr(lambda_package, "bytecode_compiler", lambda *args: None)
    app = write_app(
        tmp_path / "myapp",
        {"main.py": "", "requirements.txt": "", "template.yaml": "", "samconfig.toml": ""},
    )
    target = tmp_path / "package"
    lambda_package.build(target, app_dir=app)
    assert shipped_files(target) == {"main.py", "dispatchlet/__init__.py"}


def test_cloud_functions_stage_ships_the_app_without_its_database_state_and_environments(
    app: Path, tmp_path: Path
) -> None:
    wheel = tmp_path / "dispatchlet-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")
    staged = tmp_path / "staged"
    result = subprocess.run(
        [
            sys.executable,
            str(CLOUD_FUNCTIONS_DIR / "deploy.py"),
            "hello",
            "--region=us-central1",
            "--key-secret=dispatch-verification-key",
            f"--app-dir={app}",
            "--handler=service:endpoint",
            f"--wheel={wheel}",
            f"--stage-dir={staged}",
            *(f"--exclude={pattern}" for pattern in EXCLUDE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # main.py is the entry module made to serve service:endpoint, requirements.txt the
    # app's lines and the wheel.
    expected = {*SHIPPED, "main.py", "requirements.txt", f"vendor/{wheel.name}"}
    assert shipped_files(staged) == expected
    check_summary(result.stdout)


def test_the_sam_build_passes_its_exclude_patterns_on(tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make is not None, "make is needed for the SAM build"
    result = subprocess.run(
        [
            make,
            "--dry-run",
            "--makefile",
            str(AWS_DIR / "Makefile"),
            "build-DispatchFunction",
            f"ARTIFACTS_DIR={tmp_path}",
            "EXCLUDE=*.csv data/private",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '--exclude "*.csv" --exclude "data/private"' in result.stdout


@pytest.mark.parametrize(
    ("path", "patterns", "expected"),
    [
        ("data/notes.csv", ["*.csv"], True),
        ("notes.csv", ["data/*.csv"], False),
        ("data/notes.csv", ["data/*.csv"], True),
        ("data/private", ["data/private/"], True),
        ("deep/inside/dispatchlet.db-wal", ["(defaults)"], True),
        ("service.py", ["(defaults)"], False),
        ("Calls.DB", ["(defaults)"], True),
    ],
)
def test_patterns_match_names_anywhere_and_paths_from_the_app_folder(
    path: str, patterns: list[str], expected: bool
) -> None:
    app_files = lambda_package.app_files
    if patterns == ["(defaults)"]:
        patterns = list(app_files.DEFAULT_EXCLUDES)
    assert app_files.excluded(path, patterns) is expected
