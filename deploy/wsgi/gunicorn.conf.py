"""gunicorn settings for a dispatchlet endpoint: ``gunicorn -c gunicorn.conf.py``.

It binds 0.0.0.0:8000 (every interface, port 8000): set ``PORT``, or ``BIND`` (e.g.
``127.0.0.1:9000``), or pass ``--bind``. Command-line options override these
(``--workers 2``), and so do the environment variables read below. Meant to run behind
a reverse proxy that terminates TLS and buffers requests (see README.md).
"""

from __future__ import annotations

import os
import sys

# The application; a module path given on the command line replaces it.
wsgi_app = "app:app"

# Every interface, as a container needs; the proxy is what faces the internet.
bind = [os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")]


def _cpus() -> int:
    # The CPUs this process may use (a container's cpuset), not all the machine has.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# The worker model, stated in full: gthread, a few processes of several threads each.
# Verifying a signature and decoding protobuf hold the GIL (one process per CPU), while
# functions mostly wait on I/O (threads). A function that runs long does not get its
# worker killed by `timeout`, which for gthread only watches that the process is alive.
# A stalled request body is cut off by the adapter (wsgi_app's body_timeout).
#
# gunicorn turns `sync` into `gthread` whenever threads > 1, even when `-k sync` is
# given on the command line; so threads is 8 only for gthread, whether the class comes
# from GUNICORN_WORKER_CLASS or from -k/--worker-class. With any worker model, a thread
# is held by each connection while gunicorn reads its headers, with no time limit, so a
# client that trickles them (slowloris) holds a thread: gunicorn must run behind a proxy
# that buffers whole requests before passing them on (README.md).


def _command_line_worker_class(argv: list[str]) -> str | None:
    """The class given by -k/--worker-class, which overrides this file's."""
    for index, arg in enumerate(argv):
        if arg in ("-k", "--worker-class") and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--worker-class="):
            return arg.partition("=")[2]
        if arg.startswith("-k") and len(arg) > 2:
            return arg[2:]
    return None


worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
_effective_class = _command_line_worker_class(sys.argv[1:]) or worker_class
workers = int(os.environ.get("WEB_CONCURRENCY", _cpus()))
threads = int(os.environ.get("GUNICORN_THREADS", "8")) if _effective_class == "gthread" else 1
timeout = 30
# A deploy lets the functions running finish, within this time.
graceful_timeout = 30
# Longer than the proxy's idle timeout for upstream connections (nginx and AWS ALB:
# 60 s), so that the proxy closes idle connections first and never sends a request on
# one gunicorn is closing. Idle kept-alive connections cost no thread with gthread.
keepalive = 75
# Restart workers now and then, staggered, so a slow leak in user code cannot grow
# without bound.
max_requests = 10000
max_requests_jitter = 1000
# Import the app once before forking: a broken app or key fails at start, in one place.
preload_app = True
# The heartbeat file on tmpfs: on a container's disk, updating it can block a worker.
# Only the heartbeat lives there: a file that is unlinked as soon as it is made.
_SHM = "/dev/shm"  # noqa: S108
if os.path.isdir(_SHM):
    worker_tmp_dir = _SHM

# The scheduler sends a short request line and a few headers; the largest are
# Signature-Input and Signature, a few hundred bytes each. These are gunicorn's
# defaults, stated because they bound the memory of every request before the
# application sees it; the endpoint checks its own header limits on top.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# Whose X-Forwarded-Proto and X-Forwarded-For gunicorn believes: the proxy's addresses
# (default: this host only). Never "*" unless nothing but the proxy can reach this
# port. It changes wsgi.url_scheme and the logged client address, never the Host or
# the path a signature covers: for those, set DISPATCH_ENDPOINT_URL.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Logs on stdout and stderr, for the platform to collect. Each request: client,
# forwarded-for, request line as sent, status, response bytes, duration in ms.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
access_log_format = '%(h)s %({x-forwarded-for}i)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s"'


def on_starting(server: object) -> None:
    """Say which worker model runs: it decides what a slow client can hold."""
    cfg = server.cfg  # type: ignore[attr-defined]
    server.log.info(  # type: ignore[attr-defined]
        "worker model: %s, %d worker(s) x %d thread(s)",
        cfg.worker_class.__name__,
        cfg.workers,
        cfg.threads,
    )
