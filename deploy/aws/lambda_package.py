"""The Lambda package of an app: dispatchlet, its dependencies and the app's own
requirements built for the Lambda platform, and the app's code, side by side at the
package's root, with bytecode compiled for the runtime's Python.

    python deploy/aws/lambda_package.py TARGET --app-dir DIR [--handler MODULE:ATTR] [--zip]
        [--exclude PATTERN ...]

DIR is the app's folder (default: this repository's examples/): everything in it is
copied except what deploy/shared/app_files.py leaves out (databases such as the dev
loop's dispatchlet.db, dotfiles and dot-folders, virtual environments, caches, build
folders) and what ``--exclude`` names; the build prints what went in. Its
requirements.txt, if any, is installed with dispatchlet (less waitress, aiohttp and httptools,
which a function never uses). MODULE:ATTR (or Lambda's
MODULE.ATTR), when given, names the handler, ``handler = lambda_handler(endpoint)``: the
build checks that MODULE is in DIR and prints Lambda's Handler setting for it. The SAM build
(deploy/aws/Makefile) and deploy.py both use this, so both ship the same thing.

Lambda's code folder is read-only: Python cannot write bytecode there, so a package
without it compiles every module it imports on every cold start. The package carries
``__pycache__`` files compiled by an interpreter of the runtime's version
(``--python``, else ``pythonX.Y`` on PATH), with unchecked-hash invalidation since the
code never changes after deployment. Without such an interpreter it is built without
bytecode, and says so.

``--architecture host`` builds for this machine instead of Lambda, for the Python of
``--python-version`` (default: the one running this script): wheels and bytecode for the
same Python, so that the package imports here (tests, local runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The rule for which of the app's files ship, shared with the Cloud Functions stage.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import app_files

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples"
# template.yaml's Handler, in Lambda's MODULE.ATTR form: the example's entry module.
HANDLER = "lambda_app.handler"
# What Lambda never uses of dispatchlet's own requirements: the local HTTP server and the
# scheduler's HTTP libraries.
LAMBDA_UNUSED = frozenset({"waitress", "aiohttp", "httptools"})
# Lambda's code folder, where tracebacks should say the files are.
TASK_ROOT = "/var/task"
RUNTIME = "python3.12"
PYTHON_VERSION = "3.12"
# Graviton: cheaper per GB-second than x86_64, and every binary dependency ships
# aarch64 wheels.
ARCHITECTURE = "arm64"
HOST = "host"
ARCHITECTURES = ("arm64", "x86_64", HOST)
_MACHINES = {"arm64": "aarch64", "x86_64": "x86_64"}
# What an app folder copy leaves out besides the shared rule (deploy/shared/app_files.py):
# the deploy files that sit beside an app; its requirements are installed, not copied.
LAMBDA_EXCLUDES = ("samconfig.toml", "template.yaml", "requirements.txt")
# Lambda's limit on a function's unzipped code.
MAX_UNZIPPED_BYTES = 250 * 1000 * 1000
# A fixed timestamp makes the zip of identical files identical, byte for byte, so that
# deploy.py can tell from the code hash whether the code changed.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class PackageError(Exception):
    """The package could not be built (pip failed, a module is missing)."""


def host_python_version() -> str:
    """The version of the Python running this script, as ``X.Y``."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def default_python_version(architecture: str) -> str:
    """The Python a package is built for: Lambda's runtime, or this one for ``host``."""
    return host_python_version() if architecture == HOST else PYTHON_VERSION


def pip_platform_args(architecture: str, python_version: str = PYTHON_VERSION) -> list[str]:
    """pip options selecting wheels for Lambda's Linux on ``architecture``, for
    ``python_version``.

    ``host`` selects this machine's own platform (for tests and local runs), still for
    ``python_version``: the wheels must match the bytecode and the interpreter that
    will import them, not the Python that happens to run pip. Lambda's Python 3.12
    runtime is Amazon Linux 2023 (glibc 2.34): manylinux_2_28 and manylinux2014 wheels
    both run there. Binary wheels only: nothing may be compiled for the build machine
    by mistake.
    """
    version = ["--implementation", "cp", "--python-version", python_version]
    if architecture == HOST:
        return [*version, "--only-binary=:all:"]
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
        *version,
        "--only-binary=:all:",
    ]


def lambda_handler_name(handler: str) -> str:
    """``module:attr`` or ``module.attr`` as Lambda's Handler setting, ``module.attr``."""
    module, colon, attribute = handler.rpartition(":")
    if not colon:
        module, _, attribute = handler.rpartition(".")
    parts = [*module.split("."), attribute]
    if not module or not all(part.isidentifier() for part in parts):
        raise PackageError(f"invalid handler {handler!r}: expected MODULE:ATTRIBUTE")
    return f"{module}.{attribute}"


def check_handler(app_dir: Path, handler: str) -> str:
    """Lambda's Handler for ``handler``, once its module is found in ``app_dir``."""
    name = lambda_handler_name(handler)
    module = name.rpartition(".")[0]
    path = app_dir.joinpath(*module.split("."))
    if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
        raise PackageError(
            f"handler module {module!r} not found in {app_dir}: expected "
            f"{path.with_suffix('.py').relative_to(app_dir)} (give the app's folder with "
            "--app-dir and its handler with --handler MODULE:ATTR)"
        )
    return name


def check_output(target: Path, *, zip_file: bool) -> None:
    """Refuse, before anything is built, an output the build could not write."""
    if zip_file:
        if target.is_dir():
            raise PackageError(f"{target} is a folder: --zip writes a file")
        folder = target.parent
        if not folder.is_dir():
            raise PackageError(
                f"cannot write {target}: the folder {folder} does not exist (create it first)"
            )
        if not os.access(folder, os.W_OK):
            raise PackageError(f"cannot write {target}: the folder {folder} is not writable")
    elif target.exists() and not target.is_dir():
        raise PackageError(f"{target} is a file: the package is a folder (or pass --zip)")


def build(
    target: Path,
    *,
    architecture: str = ARCHITECTURE,
    python_version: str | None = None,
    app_dir: Path = APP_DIR,
    handler: str | None = None,
    source: Path = ROOT,
    python: str | None = None,
    exclude: Sequence[str] = (),
) -> Path:
    """Fill ``target`` with the package: dispatchlet from ``source``, its dependencies and
    the app's requirements for ``architecture``, the app's files from ``app_dir`` (less
    what the shared rule and ``exclude`` leave out), and bytecode for ``python_version``
    (default: Lambda's, or this Python's for ``host``). Returns ``target``."""
    version = python_version or default_python_version(architecture)
    platform_args = pip_platform_args(architecture, version)
    if not app_dir.is_dir():
        raise PackageError(f"app folder {app_dir} does not exist")
    check_output(target, zip_file=False)
    if handler is not None:
        check_handler(app_dir, handler)
    compiler = bytecode_compiler(version, python)
    app = app_files.select(
        app_dir, exclude, defaults=(*app_files.DEFAULT_EXCLUDES, *LAMBDA_EXCLUDES), skip=[target]
    )
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dispatchlet-package-") as scratch:
        tree = Path(scratch, "source")
        # A clean copy of the checkout, by the same rule as an app: setuptools would
        # otherwise reuse a stale build/ folder there.
        app_files.copy(app_files.select(source), tree)
        wheels = Path(scratch, "wheels")
        # dispatchlet is pure Python: its wheel builds anywhere. As a wheel it is a
        # binary requirement, which lets pip resolve the rest with --only-binary.
        _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(tree))
        built = sorted(wheels.glob("dispatchlet-*.whl"))
        if len(built) != 1:
            raise PackageError(f"expected one dispatchlet wheel, pip built {built}")
        # dispatchlet without its requirements, then those Lambda uses with the app's
        # own, in one resolution.
        install = ["install", "--target", str(target), "--upgrade", *platform_args]
        # Bytecode for the build machine's Python would not match Lambda's.
        _pip(*install, "--no-compile", "--no-deps", str(built[0]))
        requirements = [r for r in wheel_requirements(built[0]) if _name(r) not in LAMBDA_UNUSED]
        app_requirements = app_dir / "requirements.txt"
        if app_requirements.is_file():
            requirements += ["--requirement", str(app_requirements)]
        _pip(*install, "--no-compile", *requirements)
    _tidy(target)
    app_files.copy(app, target)
    if compiler is None:
        print(
            f"lambda_package: warning: no Python {version} found to compile "
            f"bytecode with (pass --python): every cold start will compile what it imports",
            file=sys.stderr,
        )
    else:
        compile_bytecode(target, compiler)
    print("\n".join(app_files.describe(app)))
    print(package_summary(target, architecture, version))
    return target


def package_summary(target: Path, architecture: str, python_version: str) -> str:
    """One line on the whole package: its files, its size against Lambda's limit."""
    sizes = [path.stat().st_size for path in target.rglob("*") if path.is_file()]
    platform = "this machine (not for Lambda)" if architecture == HOST else architecture
    line = (
        f"package: {len(sizes)} files, {app_files.size_text(sum(sizes))} unzipped, "
        f"for Python {python_version} on {platform}"
    )
    if sum(sizes) > MAX_UNZIPPED_BYTES:
        line += "; over Lambda's 250 MB limit on unzipped code"
    return line


def wheel_requirements(wheel: Path) -> list[str]:
    """The unconditional requirements (Requires-Dist without an extra) of ``wheel``."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode("utf-8")
    found = []
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement, _, marker = line.removeprefix("Requires-Dist:").partition(";")
            if "extra" not in marker:
                found.append(requirement.strip())
    return found


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[(;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def bytecode_compiler(python_version: str, python: str | None = None) -> str | None:
    """An interpreter of ``python_version`` to compile the package's bytecode with."""
    candidates = [python] if python else []
    if not python:
        if f"{sys.version_info.major}.{sys.version_info.minor}" == python_version:
            candidates.append(sys.executable)
        candidates.append(shutil.which(f"python{python_version}") or "")
        # pyenv's installs, which its shims only reach when selected.
        pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
        pattern = f"versions/{python_version}.*/bin/python{python_version}"
        candidates += [str(path) for path in sorted(pyenv.glob(pattern), reverse=True)]
    for candidate in filter(None, candidates):
        probe = subprocess.run(  # noqa: S603 - an interpreter path, no shell
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == python_version:
            return candidate
        if python:
            raise PackageError(f"--python {python} is not Python {python_version}")
    return None


def compile_bytecode(target: Path, python: str) -> None:
    """Compile every module in ``target`` as Lambda will import it: paths under
    /var/task in tracebacks, never checked against sources that cannot change."""
    # One process: in a pool, what a worker compiled before changes the marshalled output.
    command = [python, "-m", "compileall", "-q", "-s", str(target), "-p", TASK_ROOT]
    command += ["--invalidation-mode", "unchecked-hash", str(target)]
    # A fixed hash seed: frozenset constants are marshalled in hash order, and a zip of
    # the same code must hash the same for deploy.py to skip an unchanged upload.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(  # noqa: S603 - an interpreter path, no shell
        command, capture_output=True, text=True, check=False, env=env
    )
    if result.returncode != 0:
        # A file that is not valid Python for this version (a test fixture in a
        # dependency) fails to compile; everything else is compiled all the same.
        print(
            f"lambda_package: some files did not compile:\n{result.stdout[-2000:]}", file=sys.stderr
        )


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    result = subprocess.run(command, check=False)  # noqa: S603 (fixed executable, no shell)
    if result.returncode != 0:
        raise PackageError(f"pip {args[0]} failed (exit status {result.returncode})")


def _tidy(target: Path) -> None:
    """Remove what Lambda never uses and what would differ from build to build."""
    # Console scripts carry the build machine's interpreter path.
    shutil.rmtree(target / "bin", ignore_errors=True)
    for path in list(target.rglob("__pycache__")):
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


def build_zip(zip_path: Path, **options: Any) -> Path:
    """Build the package (as ``build`` does, with its keyword ``options``) and zip it."""
    check_output(zip_path, zip_file=True)
    with tempfile.TemporaryDirectory(prefix="dispatchlet-lambda-") as folder:
        build(Path(folder), **options)
        return write_zip(Path(folder), zip_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help="folder to fill (or the zip with --zip)")
    parser.add_argument("--zip", action="store_true", help="write a zip file to TARGET")
    parser.add_argument(
        "--app-dir", type=Path, default=APP_DIR, help="the app's folder (default: examples/)"
    )
    parser.add_argument(
        "--handler",
        help="the Lambda handler, MODULE:ATTR or MODULE.ATTR: checked to be in the app, "
        "and printed as Lambda's Handler setting",
    )
    app_files.add_exclude_argument(parser)
    parser.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default=ARCHITECTURE,
        help="Lambda's arm64 or x86_64, or host: this machine, to run the package here",
    )
    parser.add_argument(
        "--python-version",
        help=f"the Python the package is for (default: the runtime's, {PYTHON_VERSION}; "
        "for host, the Python running this script)",
    )
    parser.add_argument("--python", help="interpreter of --python-version to compile bytecode with")
    args = parser.parse_args(argv)
    make = build_zip if args.zip else build
    try:
        make(
            args.target,
            architecture=args.architecture,
            python_version=args.python_version,
            app_dir=args.app_dir.resolve(),
            handler=args.handler,
            python=args.python,
            exclude=args.exclude,
        )
    except (PackageError, OSError) as exc:
        print(f"lambda_package: {exc}", file=sys.stderr)
        return 1
    if args.handler:
        print(f"Handler: {lambda_handler_name(args.handler)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
