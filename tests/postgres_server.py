"""A PostgreSQL server for the tests: ``DISPATCHLET_TEST_DATABASE_URL`` when set, else
a throwaway cluster made from the installed binaries (``initdb``, ``pg_ctl``) in a
temporary folder, on a free loopback port, stopped at the end. No server and no
binaries is a failure that says how to get one, never a skip."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

URL_ENV = "DISPATCHLET_TEST_DATABASE_URL"
HOW = (
    "the PostgreSQL store's tests need a PostgreSQL server: install PostgreSQL (Debian: "
    "`apt-get install postgresql`; the tests start a throwaway server from its initdb and "
    f"pg_ctl), or set {URL_ENV}=postgresql://user@host:port/db to a server on which they "
    "may create databases"
)


def binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """A PostgreSQL server this test run started and may stop, kill and restart."""

    folder: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        pg_ctl = binary("pg_ctl")
        assert pg_ctl is not None
        subprocess.run(
            [*self.as_user, pg_ctl, "-D", str(self.folder / "data"), "-w", *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c max_connections=300 -c fsync=off -c synchronous_commit=on"
        )
        self.pg_ctl("-o", options, "-l", str(self.folder / "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")


@contextmanager
def cluster() -> Iterator[Cluster]:
    """A new PostgreSQL server in a temporary folder, stopped at the end."""
    initdb = binary("initdb")
    if initdb is None or binary("pg_ctl") is None:
        pytest.fail(HOW, pytrace=False)
    folder = Path(tempfile.mkdtemp(prefix="dispatchlet-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: as its own user, which owns the folder.
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(folder / "data"), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        running = Cluster(folder, free_port(), as_user)
        running.start()
        try:
            yield running
        finally:
            with suppress(subprocess.SubprocessError):
                running.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def server() -> Iterator[str]:
    """The URL of a server's maintenance database, for the whole test run."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    with cluster() as running:
        yield running.url


def fresh_database(server_url: str) -> str:
    """A new, empty database on the server; its URL."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:16]}"
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as db:
            db.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL at {server_url}: {exc}\n{HOW}", pytrace=False)
    head, _, _ = server_url.rpartition("/")
    return f"{head}/{name}"
