#!/usr/bin/env python3
"""Deploy an app to Cloud Functions (2nd gen).

    python deploy/cloud_functions/deploy.py NAME --region REGION --key-secret SECRET
    python deploy/cloud_functions/deploy.py NAME --region REGION --verification-key KEY
    ... [--app-dir DIR --handler MODULE:ATTR] [--endpoint-url URL] [--project P]
    ... [--dry-run | --stage-dir DIR] [-- EXTRA GCLOUD FLAGS]

The app is the folder ``--app-dir`` (default: this repository's examples/) and
``--handler`` names, as MODULE:ATTR, its Endpoint or its functions-framework target
(``run = cloud_function(endpoint)``); default: the example's hello:endpoint.

Steps:

1. Stage the folder to upload: the app's files, less what deploy/shared/app_files.py
   leaves out (databases, dotfiles, virtual environments, caches) and ``--exclude``
   PATTERN (repeatable), with a summary printed; main.py, the entry module Cloud
   Functions loads, made to serve MODULE:ATTR as target ``run`` (unless the handler is in
   main.py itself: its attribute is then the target); requirements.txt, the app's own
   lines followed by a wheel of dispatchlet built from this checkout into vendor/.
2. ``gcloud functions deploy`` it: HTTP trigger, no IAM check on callers (every request
   must carry the scheduler's signature instead), the verification key from a Secret Manager
   secret or an environment variable.
3. Read the function's URL (``gcloud functions describe``) and deploy again with
   ``DISPATCH_ENDPOINT_URL`` set to it: signatures cover the URL the scheduler calls,
   which need not be the host and path that reach the container. With
   ``--endpoint-url``, or when the function exists already (its URL is known then),
   one deploy does it all.

``--dry-run`` prints the commands instead of running them; it needs neither gcloud nor
a network. ``--stage-dir DIR`` writes the folder of step 1 to DIR and stops: serve it
locally with ``functions-framework --source DIR/main.py --target run``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

# The rule for which of the app's files ship, shared with the Lambda package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import app_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
APP_DIR = ROOT / "examples"
HANDLER = "hello:endpoint"
ENTRY_MODULE = "main.py"
REQUIREMENTS = "requirements.txt"
VENDOR = "vendor"
ENTRY_POINT = "run"
STAGE_PLACEHOLDER = "<staging folder>"
URL_PLACEHOLDER = "<URL read in step 3>"
# gcloud's words for a function that does not exist, as opposed to any other failure.
_NOT_FOUND = re.compile(r"NOT_FOUND|not found|does not exist", re.IGNORECASE)

ENTRY_SOURCE = """\
\"\"\"The entry module Cloud Functions loads, made by deploy.py: target ``run`` serves
{module}:{attribute}.\"\"\"

from dispatchlet import Endpoint
from dispatchlet.adapters.cloud_functions import cloud_function
from {module} import {attribute} as _app

run = cloud_function(_app) if isinstance(_app, Endpoint) else _app
"""


class Handler(NamedTuple):
    module: str
    attribute: str

    @property
    def entry_point(self) -> str:
        """The target name Cloud Functions calls in main.py."""
        return self.attribute if self.module == "main" else ENTRY_POINT


def parse_handler(text: str) -> Handler:
    module, colon, attribute = text.rpartition(":")
    parts = [*module.split("."), attribute]
    if not colon or not all(part.isidentifier() for part in parts):
        raise ValueError(f"--handler {text!r}: expected MODULE:ATTR, e.g. main:endpoint")
    return Handler(module, attribute)


def check_app(app_dir: Path, handler: Handler) -> None:
    """The app folder holds the handler's module, and no main.py the stage would replace."""
    if not app_dir.is_dir():
        raise ValueError(f"--app-dir {app_dir}: no such folder")
    path = app_dir.joinpath(*handler.module.split("."))
    if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
        raise ValueError(f"--handler: module {handler.module!r} not found in {app_dir}")
    if handler.module != "main" and (app_dir / ENTRY_MODULE).exists():
        raise ValueError(
            f"{app_dir / ENTRY_MODULE} would be replaced by the entry module made for "
            f"{handler.module}:{handler.attribute}: name the handler in it (main:ATTR)"
        )
    if handler.module == "main" and _assigns_endpoint(app_dir / ENTRY_MODULE, handler.attribute):
        # main.py is the entry module itself: Cloud Functions calls main.ATTR directly.
        raise ValueError(
            f"main:{handler.attribute} is an Endpoint, and functions-framework calls a "
            f"target function: add `run = cloud_function({handler.attribute})` to main.py "
            "(from dispatchlet.adapters.cloud_functions) and pass --handler main:run"
        )


def _assigns_endpoint(path: Path, name: str) -> bool:
    """Whether the module at ``path`` assigns ``name = Endpoint(...)`` at top level."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            callee = node.value.func
            called = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
            if called == "Endpoint" and name in targets:
                return True
    return False


def check_key(text: str) -> None:
    """Refuse a verification key the endpoint would refuse, before anything is built."""
    try:
        from dispatchlet.core.keys import load_public_keys
    except ImportError:
        return  # without dispatchlet here, the endpoint checks it when it starts
    try:
        keys = load_public_keys(text)
    except ValueError as exc:
        raise ValueError(f"--verification-key: {exc}") from None
    if not keys:
        raise ValueError("--verification-key holds no key")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    # Everything after `--` goes to `gcloud functions deploy` unchanged.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="deploy.py",
        description="Deploy an app's Dispatch endpoint to Cloud Functions (2nd gen).",
        epilog="Flags after `--` are passed to `gcloud functions deploy` "
        "(e.g. -- --memory=512Mi --min-instances=1).",
    )
    parser.add_argument("name", help="the function's name")
    parser.add_argument("--region", required=True, help="e.g. us-central1")
    parser.add_argument("--project", help="Google Cloud project (default: gcloud's)")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--key-secret",
        metavar="SECRET",
        help="Secret Manager secret holding the verification key ('name' means "
        "'name:latest'; 'name:VERSION' pins a version)",
    )
    key.add_argument(
        "--verification-key",
        metavar="KEY",
        help="the verification key itself (base64 or PEM), set as an environment variable",
    )
    parser.add_argument(
        "--endpoint-url",
        help="the public URL the scheduler calls, when known (skips reading it back)",
    )
    parser.add_argument(
        "--app-dir", type=Path, default=APP_DIR, help="the app's folder (default: examples/)"
    )
    parser.add_argument(
        "--handler",
        default=HANDLER,
        help="MODULE:ATTR of the app's Endpoint or functions-framework target "
        f"(default: {HANDLER})",
    )
    app_files.add_exclude_argument(parser)
    parser.add_argument("--runtime", default="python312")
    parser.add_argument(
        "--wheel", type=Path, help="a dispatchlet wheel to upload instead of building one"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--stage-dir", type=Path, help="write the folder to upload to this new folder and stop"
    )
    args = parser.parse_args(argv)
    args.extra = extra
    try:
        args.handler = parse_handler(args.handler)
        args.app_dir = args.app_dir.resolve()
        check_app(args.app_dir, args.handler)
        if args.verification_key is not None:
            check_key(args.verification_key)
    except ValueError as exc:
        parser.error(str(exc))
    if args.stage_dir is not None and args.stage_dir.exists():
        parser.error(f"--stage-dir {args.stage_dir} exists already")
    if args.endpoint_url and not args.endpoint_url.startswith("https://"):
        parser.error("--endpoint-url must be an https:// URL")
    if args.wheel and not args.wheel.is_file():
        parser.error(f"--wheel {args.wheel}: no such file")
    return args


def location_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--gen2", f"--region={args.region}"]
    if args.project:
        flags.append(f"--project={args.project}")
    return flags


def deploy_command(args: argparse.Namespace, source: str, endpoint_url: str | None) -> list[str]:
    command = [
        "gcloud",
        "functions",
        "deploy",
        args.name,
        *location_flags(args),
        f"--runtime={args.runtime}",
        f"--source={source}",
        f"--entry-point={args.handler.entry_point}",
        "--trigger-http",
        # Cloud IAM lets every caller in; the endpoint refuses any request that does not
        # carry a valid signature by the scheduler's key.
        "--allow-unauthenticated",
    ]
    env: dict[str, str] = {}
    if args.key_secret:
        secret = args.key_secret if ":" in args.key_secret else f"{args.key_secret}:latest"
        command.append(f"--set-secrets=DISPATCH_VERIFICATION_KEY={secret}")
    else:
        # A PEM key stays on one line: the endpoint reads literal `\n` as newlines.
        key = args.verification_key.strip().replace("\r\n", "\n").replace("\n", "\\n")
        env["DISPATCH_VERIFICATION_KEY"] = key
    if endpoint_url:
        env["DISPATCH_ENDPOINT_URL"] = endpoint_url
    if env:
        command.append(f"--set-env-vars={dict_flag(env)}")
    return [*command, *args.extra]


def describe_command(args: argparse.Namespace) -> list[str]:
    return [
        "gcloud",
        "functions",
        "describe",
        args.name,
        *location_flags(args),
        "--format=value(url)",
    ]


def dict_flag(values: dict[str, str]) -> str:
    """A gcloud dictionary flag value; a value holding a comma (several base64 keys)
    needs another delimiter, chosen with gcloud's `^DELIM^` prefix."""
    pairs = [f"{name}={value}" for name, value in values.items()]
    if not any("," in value for value in values.values()):
        return ",".join(pairs)
    delimiter = next(d for d in "|;@#~" if not any(d in pair for pair in pairs))
    return f"^{delimiter}^" + delimiter.join(pairs)


def wheel_command(vendor: str, project: str) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", f"--wheel-dir={vendor}", project]


def build_wheel(vendor: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="dispatchlet-src-") as folder:
        # setuptools builds inside the project folder and reuses a stale build/ there,
        # so the wheel is built from a clean copy of the checkout, by the apps' rule.
        project = Path(folder) / "dispatchlet"
        app_files.copy(app_files.select(ROOT), project)
        run(wheel_command(str(vendor), str(project)))


def stage(folder: Path, args: argparse.Namespace) -> None:
    """Fill ``folder`` with what Cloud Functions builds the function from."""
    app = app_files.select(args.app_dir, args.exclude, skip=[folder])
    app_files.copy(app, folder)
    print("\n".join(app_files.describe(app)))
    handler: Handler = args.handler
    if handler.module != "main":
        (folder / ENTRY_MODULE).write_text(
            ENTRY_SOURCE.format(module=handler.module, attribute=handler.attribute)
        )
    vendor = folder / VENDOR
    vendor.mkdir(exist_ok=True)
    if args.wheel is None:
        build_wheel(vendor)
    else:
        shutil.copy(args.wheel, vendor / args.wheel.name)
    wheels = sorted(vendor.glob("dispatchlet-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one dispatchlet wheel in {VENDOR}/, found {wheels}")
    own = folder / REQUIREMENTS
    lines = own.read_text().splitlines() if own.is_file() else []
    # The cloud-functions extra brings functions-framework.
    lines.append(f"./{VENDOR}/{wheels[0].name}[cloud-functions]")
    own.write_text("\n".join(lines) + "\n")


def dry_run(args: argparse.Namespace) -> None:
    show = shlex.join
    print(
        f"# 1. Stage {args.app_dir} ({args.handler.module}:{args.handler.attribute}), "
        f"its entry module and requirements, and a dispatchlet wheel in {VENDOR}/"
    )
    if args.wheel is None:
        print(f"#    (built from a clean copy of {ROOT})")
        print(show(wheel_command(f"{STAGE_PLACEHOLDER}/{VENDOR}", str(ROOT))))
    else:
        print(f"#    (the wheel is {args.wheel})")
    print(f"# 2. Deploy {STAGE_PLACEHOLDER}")
    print(show(deploy_command(args, STAGE_PLACEHOLDER, args.endpoint_url)))
    if args.endpoint_url:
        return
    print("# 3. Read the function's URL")
    print(show(describe_command(args)))
    print("# 4. Deploy again with DISPATCH_ENDPOINT_URL set to that URL")
    print(show(deploy_command(args, STAGE_PLACEHOLDER, URL_PLACEHOLDER)))
    print("# (When the function exists already, its URL is read first and step 2 is skipped.)")


def run(command: list[str], *, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run one of the commands above (built from this script's own arguments)."""
    return subprocess.run(command, capture_output=capture, text=True, check=not capture)  # noqa: S603


def read_url(args: argparse.Namespace) -> str | None:
    """The deployed function's URL, or None when there is no such function yet; any
    other failure of gcloud (no account, no project, no permission) stops the deploy
    with gcloud's own message."""
    result = run(describe_command(args), capture=True)
    url = result.stdout.strip()
    if result.returncode == 0 and url.startswith("https://"):
        return url
    if result.returncode != 0 and not _NOT_FOUND.search(result.stderr):
        message = result.stderr.strip() or f"exit status {result.returncode}"
        raise SystemExit(f"`{shlex.join(describe_command(args))}` failed:\n{message}")
    return None


def deploy(args: argparse.Namespace) -> str:
    if shutil.which("gcloud") is None:
        raise SystemExit(
            "gcloud is not installed (https://cloud.google.com/sdk/docs/install); "
            "--dry-run prints the commands without it"
        )
    url = args.endpoint_url or read_url(args)
    with tempfile.TemporaryDirectory(prefix="dispatchlet-cf-") as folder:
        stage(Path(folder), args)
        run(deploy_command(args, folder, url))
        if url is None:
            url = read_url(args)
            if url is None:
                describe = shlex.join(describe_command(args))
                raise SystemExit(f"deployed, but `{describe}` printed no https:// URL")
            run(deploy_command(args, folder, url))
    return url


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.dry_run:
        dry_run(args)
        return 0
    if args.stage_dir is not None:
        args.stage_dir.mkdir(parents=True)
        stage(args.stage_dir, args)
        print(f"Staged in {args.stage_dir} (target {args.handler.entry_point})")
        return 0
    try:
        url = deploy(args)
    except subprocess.CalledProcessError as exc:
        print(f"deploy.py: `{shlex.join(exc.cmd)}` failed", file=sys.stderr)
        return exc.returncode or 1
    print(
        f"Deployed. Endpoint URL: {url}\n"
        f"Calls to it go through your scheduler: dispatchlet dispatch --endpoint {url} "
        "FUNCTION [INPUT]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
