"""The committed protobuf modules are exactly what the generator produces today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dispatchlet import Status
from dispatchlet.proto.dispatch.sdk.v1 import status_pb2

ROOT = Path(__file__).resolve().parent.parent


def sources(root: Path) -> list[Path]:
    """Python modules and stubs below ``root``; bytecode caches are not sources."""
    return [p for p in root.rglob("*.py*") if p.suffix in (".py", ".pyi")]


def test_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.relative_to(tmp_path): p.read_text() for p in sources(tmp_path)}
    # Everything below proto/'s own package files: dispatch/ and dispatchlet/.
    committed = {
        p.relative_to(ROOT / "proto"): p.read_text()
        for package in ("dispatch", "dispatchlet")
        for p in sources(ROOT / "proto" / package)
    }
    assert sorted(fresh) == sorted(committed)
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"regenerate with scripts/generate_proto.py: {stale}"


def test_status_enum_mirrors_the_proto_enum() -> None:
    proto = {
        v.name.removeprefix("STATUS_"): v.number
        for v in status_pb2.DESCRIPTOR.enum_types_by_name["Status"].values
    }
    assert proto == {s.name: s.value for s in Status}


def test_retryable_statuses() -> None:
    assert {s for s in Status if s.retryable} == {
        Status.TIMEOUT,
        Status.THROTTLED,
        Status.TEMPORARY_ERROR,
        Status.INCOMPATIBLE_STATE,
        Status.DNS_ERROR,
        Status.TCP_ERROR,
        Status.TLS_ERROR,
        Status.HTTP_ERROR,
    }
