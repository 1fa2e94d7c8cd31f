"""Serve an app's Endpoint on waitress, for production (pure Python; runs on Windows too).

    python serve_waitress.py APP      # e.g. myapp.py, myapp:endpoint, package.module

APP is what ``dispatchlet serve`` takes: module, module:attr, path/to/file.py or
path/to/file.py:attr, naming an ``Endpoint`` (without :attr, the module's only one). A
module name is looked up in the current directory first, so run it from your app's
folder, or give the file's path. HOST (0.0.0.0), PORT (8000) and THREADS (8) come from
the environment, or from --host, --port and --threads.

Unlike ``dispatchlet serve`` (loopback, a session key when none is set), this listens
where it is told and never makes a key: without DISPATCH_VERIFICATION_KEY every request
is refused. The waitress settings are those of ``dispatchlet serve``: the body limit
follows the endpoint's, and a connection that stops sending is closed within seconds
(see README.md). The same with the command line tool, for an app module that holds
``app = wsgi_app(endpoint)``:

    waitress-serve --listen 0.0.0.0:8000 --threads 8 --max-request-body-size 16842752 \\
        --channel-timeout 10 --cleanup-interval 2 app:app
"""

from __future__ import annotations

import argparse
import os
import sys

from dispatchlet.adapters.wsgi import wsgi_app
from dispatchlet.serving import logging_setup
from dispatchlet.serving.app_loading import AppLoadError, load_endpoint
from dispatchlet.serving.waitress_server import waitress_options
from waitress import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an app's Endpoint on waitress.")
    parser.add_argument("app", metavar="APP", help="module[:attr] or path/to/file.py[:attr]")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))  # noqa: S104
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "8")))
    logging_setup.add_arguments(parser, default_level="info")
    args = parser.parse_args(argv)
    # waitress says where it listens at info.
    logging_setup.configure(args, also=("waitress",))
    try:
        endpoint = load_endpoint(args.app)
    except AppLoadError as exc:
        print(f"serve_waitress.py: error: {exc}", file=sys.stderr)
        return 2
    serve(
        wsgi_app(endpoint),
        host=args.host,
        port=args.port,
        threads=args.threads,
        **waitress_options(endpoint),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
