"""Regenerate the protobuf modules and type stubs under proto/.

Usage: python scripts/generate_proto.py [--out DIR]

protoc writes imports as ``from dispatch.sdk.v1 import ...``; the modules live under
``dispatchlet.proto`` (``dispatchlet.proto.dispatch`` for the SDK's packages,
``dispatchlet.proto.dispatchlet`` for the project's own), so those imports are
rewritten after generation. Writing to
another directory (``--out``) lets a test compare a fresh generation with the
committed files.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "dispatchlet.proto"
# The proto packages: dispatch.* (the SDK's) and dispatchlet.* (the project's own).
_IMPORT = re.compile(r"^(from|import) (dispatch|dispatchlet)\.", re.MULTILINE)


def proto_sources() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Generate into ``out`` (laid out like proto/) and return the files written."""
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-mypy not found: pip install 'dispatchlet[test]'")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"--plugin=protoc-gen-mypy={plugin}",
                f"--python_out={tmp}",
                f"--mypy_out={tmp}",
                *(str(p.relative_to(PROTO_ROOT)) for p in proto_sources()),
            ],
            check=True,
            cwd=PROTO_ROOT,
        )
        written = []
        for src in sorted(Path(tmp).rglob("*_pb2.py*")):
            rel = src.relative_to(tmp)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_IMPORT.sub(rf"\1 {PACKAGE}.\2.", src.read_text()))
            written.append(dest)
    # Every directory on the way down is a regular package.
    for path in list(written):
        for parent in path.relative_to(out).parents:
            if parent == Path("."):
                continue
            init = out / parent / "__init__.py"
            if not init.exists():
                init.write_text("")
            if init not in written:
                written.append(init)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))


if __name__ == "__main__":
    main()
