"""The Lambda package of the example app: dispatchlet, its dependencies built for the
Lambda platform, and the app's modules, side by side at the package's root.

The SAM build (deploy/aws/Makefile) and deploy.py both use this, so both ship the same
thing. As a command: ``python deploy/aws/lambda_package.py TARGET_DIR`` fills TARGET_DIR,
``--zip FILE`` writes a zip instead.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples"
# The entry module and what it imports; template.yaml's Handler names the first one.
APP_MODULES = ("lambda_app.py", "hello.py")
HANDLER = "lambda_app.handler"
RUNTIME = "python3.12"
PYTHON_VERSION = "3.12"
# Graviton: cheaper per GB-second than x86_64, and every binary dependency ships
# aarch64 wheels.
ARCHITECTURE = "arm64"
HOST = "host"
ARCHITECTURES = ("arm64", "x86_64", HOST)
_MACHINES = {"arm64": "aarch64", "x86_64": "x86_64"}
# What a source tree copy leaves out: VCS data, virtual environments, caches, and
# setuptools' own build folders, whose stale files would otherwise end up in the wheel.
_SOURCE_IGNORE = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "*.pyc")
# A fixed timestamp makes the zip of identical files identical, byte for byte, so that
# deploy.py can tell from the code hash whether the code changed.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class PackageError(Exception):
    """The package could not be built (pip failed, a module is missing)."""


def pip_platform_args(architecture: str, python_version: str = PYTHON_VERSION) -> list[str]:
    """pip options selecting wheels for Lambda's Linux on ``architecture``.

    ``host`` selects the running interpreter's own wheels (for tests on this machine).
    Lambda's Python 3.12 runtime is Amazon Linux 2023 (glibc 2.34): manylinux_2_28 and
    manylinux2014 wheels both run there. Binary wheels only: nothing may be compiled
    for the build machine by mistake.
    """
    if architecture == HOST:
        return ["--only-binary=:all:"]
    machine = _MACHINES.get(architecture)
    if machine is None:
        raise PackageError(
            f"unknown architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}"
        )
    return [
        "--platform",
        f"manylinux_2_28_{machine}",
        "--platform",
        f"manylinux2014_{machine}",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--only-binary=:all:",
    ]


def build(
    target: Path,
    *,
    architecture: str = ARCHITECTURE,
    python_version: str = PYTHON_VERSION,
    app_dir: Path = APP_DIR,
    modules: Sequence[str] = APP_MODULES,
    source: Path = ROOT,
) -> Path:
    """Fill ``target`` with the package: dispatchlet from ``source``, its dependencies
    for ``architecture``, and ``modules`` from ``app_dir``. Returns ``target``."""
    platform_args = pip_platform_args(architecture, python_version)
    missing = [name for name in modules if not (app_dir / name).is_file()]
    if missing:
        raise PackageError(f"app modules not found in {app_dir}: {', '.join(missing)}")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dispatchlet-package-") as scratch:
        tree = Path(scratch, "source")
        shutil.copytree(source, tree, ignore=_SOURCE_IGNORE, symlinks=True)
        wheels = Path(scratch, "wheels")
        # dispatchlet is pure Python: its wheel builds anywhere. As a wheel it is a
        # binary requirement, which lets pip resolve the rest with --only-binary.
        _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(tree))
        built = sorted(wheels.glob("dispatchlet-*.whl"))
        if len(built) != 1:
            raise PackageError(f"expected one dispatchlet wheel, pip built {built}")
        _pip(
            "install",
            "--target",
            str(target),
            "--upgrade",
            # Bytecode for the build machine's Python would not match Lambda's.
            "--no-compile",
            *platform_args,
            str(built[0]),
        )
    _tidy(target)
    for name in modules:
        shutil.copyfile(app_dir / name, target / name)
    return target


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    result = subprocess.run(command, check=False)  # noqa: S603 (fixed executable, no shell)
    if result.returncode != 0:
        raise PackageError(f"pip {args[0]} failed (exit status {result.returncode})")


def _tidy(target: Path) -> None:
    """Remove what Lambda never uses and what would differ from build to build."""
    # Console scripts carry the build machine's interpreter path.
    shutil.rmtree(target / "bin", ignore_errors=True)
    for path in target.rglob("__pycache__"):
        shutil.rmtree(path, ignore_errors=True)
    # Records where the wheel came from: a temporary path, new on every build. Its line
    # in RECORD goes too, since that line holds its hash.
    for path in target.glob("*.dist-info/direct_url.json"):
        path.unlink()
        record = path.with_name("RECORD")
        if record.is_file():
            entry = f"{path.parent.name}/{path.name},"
            lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = "".join(line for line in lines if not line.startswith(entry))
            record.write_text(kept, encoding="utf-8")


def write_zip(folder: Path, zip_path: Path) -> Path:
    """Zip ``folder``'s files, reproducibly: sorted names, one timestamp, one mode."""
    files = sorted(
        (path for path in folder.rglob("*") if path.is_file()),
        key=lambda path: path.relative_to(folder).as_posix(),
    )
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_ZIP_DATE)
            # Lambda runs the code as another user than the files' owner: world-readable.
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return zip_path


def build_zip(
    zip_path: Path,
    *,
    architecture: str = ARCHITECTURE,
    python_version: str = PYTHON_VERSION,
    app_dir: Path = APP_DIR,
) -> Path:
    """Build the package (as ``build`` does) and zip it to ``zip_path``."""
    with tempfile.TemporaryDirectory(prefix="dispatchlet-lambda-") as folder:
        build(
            Path(folder), architecture=architecture, python_version=python_version, app_dir=app_dir
        )
        return write_zip(Path(folder), zip_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="folder to fill (or the zip with --zip)")
    parser.add_argument("--zip", action="store_true", help="write a zip file to TARGET")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default=ARCHITECTURE)
    parser.add_argument("--python-version", default=PYTHON_VERSION)
    parser.add_argument("--app-dir", type=Path, default=APP_DIR)
    args = parser.parse_args(argv)
    make = build_zip if args.zip else build
    try:
        make(
            args.target,
            architecture=args.architecture,
            python_version=args.python_version,
            app_dir=args.app_dir,
        )
    except (PackageError, OSError) as exc:
        print(f"lambda_package: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
