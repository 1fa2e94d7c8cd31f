"""``dispatchlet keygen``: a new Ed25519 key pair for signing and verifying requests."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..core.keys import (
    SIGNING_KEY_ENV,
    VERIFICATION_KEY_ENV,
    private_key_base64,
    private_key_pem,
    public_key_base64,
    public_key_pem,
)
from .errors import EXIT_OK, CommandError

SIGNING_KEY_FILE = "signing-key.pem"
VERIFICATION_KEY_FILE = "verification-key.pem"

_DESCRIPTION = f"""\
Make a new Ed25519 key pair and print it.

The verification key (public) goes to the endpoint, in {VERIFICATION_KEY_ENV}.
The signing key (private) signs requests: `dispatchlet call` reads it from
{SIGNING_KEY_ENV}, --key or --key-file. Keep it secret.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "keygen",
        help="make a new key pair for signing and verifying requests",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help=f"also write {SIGNING_KEY_FILE} (mode 0600) and {VERIFICATION_KEY_FILE} to DIR",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite key files that already exist in DIR"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Generate the pair, write it when asked, print it."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    public_b64 = public_key_base64(public)
    lines = [
        "Verification key (public): the endpoint checks signatures with it.",
        f"Set {VERIFICATION_KEY_ENV} to either form.",
        "",
        f"base64: {public_b64}",
        "PEM:",
        public_key_pem(public).rstrip(),
        "",
    ]
    if args.out_dir is None:
        signing_export = private_key_base64(key)
        lines += [
            "Signing key (private, keep it secret): `dispatchlet call` signs with it,",
            f"reading it from {SIGNING_KEY_ENV}, --key or --key-file.",
            "",
            f"base64: {signing_export}",
            "PEM:",
            private_key_pem(key).rstrip(),
            "",
        ]
    else:
        signing_path, verification_path = write_key_files(key, args.out_dir, force=args.force)
        signing_export = f'"$(cat {shlex.quote(str(signing_path))})"'
        lines += [
            f"Wrote the signing key (private, keep it secret) to {signing_path}",
            f"and the verification key to {verification_path}.",
            f"`dispatchlet call --key-file {shlex.quote(str(signing_path))}` signs with it.",
            "",
        ]
    lines += [
        "For a shell:",
        "",
        f"export {VERIFICATION_KEY_ENV}={public_b64}",
        f"export {SIGNING_KEY_ENV}={signing_export}",
    ]
    print("\n".join(lines))
    return EXIT_OK


def write_key_files(key: Ed25519PrivateKey, directory: Path, *, force: bool) -> tuple[Path, Path]:
    """Write the private key (mode 0600) and the public key as PEM files in ``directory``."""
    signing_path = directory / SIGNING_KEY_FILE
    verification_path = directory / VERIFICATION_KEY_FILE
    if not force:
        existing = [str(p) for p in (signing_path, verification_path) if p.exists()]
        if existing:
            raise CommandError(
                f"refusing to overwrite {' and '.join(existing)}: pass --force to replace "
                "(endpoints verifying with the old key would then refuse new signatures)"
            )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write(signing_path, private_key_pem(key), private=True)
        _write(verification_path, public_key_pem(key.public_key()), private=False)
    except OSError as exc:
        raise CommandError(f"cannot write the key files: {exc}") from None
    return signing_path, verification_path


def _write(path: Path, text: str, *, private: bool) -> None:
    # A private key file is created with mode 0600, never readable by others even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        if private and hasattr(os, "fchmod"):
            os.fchmod(file.fileno(), 0o600)  # a replaced file would keep its old mode
        file.write(text)
