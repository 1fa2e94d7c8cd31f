"""Serve app.py's endpoint on waitress (pure Python; runs on Windows too).

    python serve_waitress.py     # HOST (0.0.0.0), PORT (8000), THREADS (8) from the environment

Waitress reads a whole request body before the application sees it, so its own limits
bound what clients send: ``max_request_body_size`` follows the endpoint's limit (a body
announced larger is answered 413 at once, unread; one just over the endpoint's limit is
read, then refused by the endpoint), and ``channel_timeout`` drops a client that stops
sending. The same with the command line tool:

    waitress-serve --listen 0.0.0.0:8000 --threads 8 --max-request-body-size 16842752 \\
        --channel-timeout 60 app:app
"""

from __future__ import annotations

import logging
import os

from app import app, endpoint
from waitress import serve


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(
        app,
        host=os.environ.get("HOST", "0.0.0.0"),  # noqa: S104 - a container listens on all
        port=int(os.environ.get("PORT", "8000")),
        threads=int(os.environ.get("THREADS", "8")),
        # waitress counts a chunked body's framing too, and refuses a body of exactly its
        # limit: the margin lets in every body the endpoint takes (it refuses the rest).
        max_request_body_size=endpoint.max_body_size + 65536,
        channel_timeout=60,
    )


if __name__ == "__main__":
    main()
