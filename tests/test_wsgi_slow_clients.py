"""The WSGI deploy recipe's configurations under slow clients: 30 connections trickling
their request heads (slowloris) must not keep the scheduler's signed requests from being
answered. gunicorn alone (sync or gthread workers, and functions-framework, which runs
gunicorn gthread) reads heads in its worker threads without a time limit and answers
fewer (the control here: gthread); the guides' configurations are waitress through
serve_waitress.py, gunicorn as gunicorn.conf.py runs it behind nginx buffering whole
requests, and ``dispatchlet serve`` (a thread per connection, the app's turns taken only
by requests that arrived whole)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from postgres_server import free_port
from slow_clients import Trickle, wait_until_accepted
from support import http_request, run_request, signed
from test_wsgi_servers import (
    APP,
    DEPLOY,
    SERVERS,
    Server,
    encode,
    launch,
    read_answer,
    server_env,
    stop,
)

pytestmark = pytest.mark.slow

SLOW_CLIENTS = 30
PROBES = 8
PROBE_TIMEOUT = 20.0


@contextlib.contextmanager
def slowloris(port: int) -> Iterator[Trickle]:
    """30 connections trickling their heads, once the server has accepted them all."""
    attack = Trickle(interval=0.5)
    try:
        start = f"POST /run HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        for _ in range(SLOW_CLIENTS):
            attack.open(("127.0.0.1", port), start)
        wait_until_accepted(port, attack.sockets)
        yield attack
    finally:
        attack.close()


def probe(port: int, number: int) -> bool:
    """Whether a signed Run request gets its function's output."""
    request = signed(
        http_request(run_request("echo", f"probe {number}"), authority=f"127.0.0.1:{port}")
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
            sock.settimeout(PROBE_TIMEOUT)
            sock.sendall(encode(request))
            answer = read_answer(sock)
    except OSError:
        return False
    return answer is not None and answer.output() == f"probe {number}"


def answered_under_attack(port: int) -> int:
    """Signed requests answered, of ``PROBES`` sent at once while 30 clients trickle."""
    with slowloris(port), ThreadPoolExecutor(PROBES) as pool:
        return sum(pool.map(lambda n: probe(port, n), range(PROBES)))


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "server_app.py").write_text(APP)
    return directory


def test_plain_gunicorn_gthread_answers_fewer_probes_under_the_same_attack(
    app_dir: Path, tmp_path: Path
) -> None:
    # The control: functions-framework's default worker, without the guides' proxy.
    # Fewer than every probe answered shows that the attack takes hold, and so that the
    # configurations below answering every one is their doing.
    env = server_env(tmp_path)
    server: Server = launch("gunicorn-gthread", SERVERS["gunicorn-gthread"], app_dir, tmp_path, env)
    try:
        assert answered_under_attack(server.port) < PROBES
    finally:
        stop(server.process)


def test_waitress_as_the_recipe_runs_it_answers_every_probe(app_dir: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, HOST="127.0.0.1", PORT="0")
    command = [sys.executable, str(DEPLOY / "serve_waitress.py"), "server_app.py"]
    server: Server = launch("waitress", command, app_dir, tmp_path, env)
    try:
        assert answered_under_attack(server.port) == PROBES
        server.assert_serves()
    finally:
        stop(server.process)


def test_dispatchlet_serve_answers_every_probe(app_dir: Path, tmp_path: Path) -> None:
    server: Server = launch(
        "dispatchlet-serve", SERVERS["dispatchlet-serve"], app_dir, tmp_path, server_env(tmp_path)
    )
    try:
        assert answered_under_attack(server.port) == PROBES
        server.assert_serves()
    finally:
        stop(server.process)


NGINX_SITE = (DEPLOY / "nginx.conf").read_text()


def nginx_config(folder: Path, port: int, upstream: int) -> Path:
    """The guide's nginx site, on loopback ports, in a main configuration of its own
    whose files all live in ``folder``."""
    site = NGINX_SITE.replace("listen 80;", f"listen 127.0.0.1:{port};")
    site = site.replace("127.0.0.1:8000", f"127.0.0.1:{upstream}")
    assert f"127.0.0.1:{upstream}" in site, site
    assert f"127.0.0.1:{port}" in site, site
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = folder / "nginx.conf"
    config.write_text(
        f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n    access_log off;\n{temp}\n{site}\n}}\n"
    )
    return config


def test_gunicorn_behind_the_guides_nginx_answers_every_probe(
    app_dir: Path, tmp_path: Path
) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is needed for this test: apt-get install nginx (.ci/run does)")
    upstream = free_port()
    env = server_env(tmp_path, BIND=f"127.0.0.1:{upstream}", WEB_CONCURRENCY="1")
    command = [sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py")]
    gunicorn: Server = launch("gunicorn", [*command, "server_app:app"], app_dir, tmp_path, env)
    folder = tmp_path / "nginx"
    folder.mkdir()
    port = free_port()
    config = nginx_config(folder, port, gunicorn.port)
    proxy = subprocess.Popen(
        [nginx, "-p", str(folder), "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not probe(port, -1):
            assert proxy.poll() is None, (folder / "error.log").read_text()
            assert time.monotonic() < deadline, (folder / "error.log").read_text()
            time.sleep(0.1)
        assert answered_under_attack(port) == PROBES
        gunicorn.assert_serves()
    finally:
        stop(proxy)
        stop(gunicorn.process)
