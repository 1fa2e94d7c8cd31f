#!/usr/bin/env python3
"""Deploy the example function (main.py, target ``run``) to Cloud Functions (2nd gen).

    python deploy/cloud_functions/deploy.py NAME --region REGION --key-secret SECRET
    python deploy/cloud_functions/deploy.py NAME --region REGION --verification-key KEY
    ... [--endpoint-url URL] [--project P] [--dry-run] [-- EXTRA GCLOUD FLAGS]

Steps:

1. Stage the folder to upload: main.py, hello.py, requirements.txt, and in vendor/ a
   wheel of dispatchlet built from this checkout (the file requirements.txt names).
2. ``gcloud functions deploy`` it: HTTP trigger, no IAM check on callers (every request
   must carry a Dispatch signature instead), the verification key from a Secret Manager
   secret or an environment variable.
3. Read the function's URL (``gcloud functions describe``) and deploy again with
   ``DISPATCH_ENDPOINT_URL`` set to it: signatures cover the URL the scheduler calls,
   which need not be the host and path that reach the container. With
   ``--endpoint-url``, or when the function exists already (its URL is known then),
   one deploy does it all.

``--dry-run`` prints the commands instead of running them; it needs neither gcloud nor
a network.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
UPLOADED = ("main.py", "hello.py", "requirements.txt")
VENDOR = "vendor"
ENTRY_POINT = "run"
STAGE_PLACEHOLDER = "<staging folder>"
URL_PLACEHOLDER = "<URL read in step 3>"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    # Everything after `--` goes to `gcloud functions deploy` unchanged.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="deploy.py",
        description="Deploy the example Dispatch endpoint to Cloud Functions (2nd gen).",
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
    parser.add_argument("--runtime", default="python312")
    parser.add_argument(
        "--wheel", type=Path, help="a dispatchlet wheel to upload instead of building one"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    args.extra = extra
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
        f"--entry-point={ENTRY_POINT}",
        "--trigger-http",
        # Cloud IAM lets every caller in; the endpoint refuses any request that does not
        # carry a valid Dispatch signature.
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


def wheel_name() -> str:
    """The wheel file requirements.txt installs dispatchlet from."""
    for line in (HERE / "requirements.txt").read_text().splitlines():
        if line.startswith(f"./{VENDOR}/"):
            return line.removeprefix(f"./{VENDOR}/").partition("[")[0]
    raise SystemExit(f"requirements.txt installs no wheel from ./{VENDOR}/")


def wheel_command(vendor: str, project: str) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", f"--wheel-dir={vendor}", project]


def build_wheel(vendor: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="dispatchlet-src-") as folder:
        # setuptools builds inside the project folder and reuses a stale build/ there,
        # so the wheel is built from a clean copy of the checkout.
        project = Path(folder) / "dispatchlet"
        ignore = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__")
        shutil.copytree(ROOT, project, ignore=ignore)
        run(wheel_command(str(vendor), str(project)))


def stage(folder: Path, wheel: Path | None) -> None:
    """Fill ``folder`` with what Cloud Functions builds the function from."""
    for name in UPLOADED:
        shutil.copy(HERE / name, folder / name)
    vendor = folder / VENDOR
    vendor.mkdir()
    if wheel is None:
        build_wheel(vendor)
    else:
        shutil.copy(wheel, vendor / wheel.name)
    expected = wheel_name()
    if not (vendor / expected).is_file():
        found = ", ".join(p.name for p in vendor.iterdir()) or "nothing"
        raise SystemExit(
            f"requirements.txt installs {VENDOR}/{expected}, but {VENDOR}/ holds {found}: "
            "make that line name the wheel of this version"
        )


def dry_run(args: argparse.Namespace) -> None:
    show = shlex.join
    print(f"# 1. Stage {', '.join(UPLOADED)} and a dispatchlet wheel in {VENDOR}/")
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
    """The deployed function's URL, or None when there is no such function yet."""
    result = run(describe_command(args), capture=True)
    url = result.stdout.strip()
    return url if result.returncode == 0 and url.startswith("https://") else None


def deploy(args: argparse.Namespace) -> str:
    if shutil.which("gcloud") is None:
        raise SystemExit(
            "gcloud is not installed (https://cloud.google.com/sdk/docs/install); "
            "--dry-run prints the commands without it"
        )
    url = args.endpoint_url or read_url(args)
    with tempfile.TemporaryDirectory(prefix="dispatchlet-cf-") as folder:
        stage(Path(folder), args.wheel)
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
    try:
        url = deploy(args)
    except subprocess.CalledProcessError as exc:
        print(f"deploy.py: `{shlex.join(exc.cmd)}` failed", file=sys.stderr)
        return exc.returncode or 1
    print(f"Deployed. Register this endpoint URL with Dispatch: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
