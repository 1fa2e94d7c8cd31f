"""Google Cloud Functions adapter: ``run = cloud_function(endpoint)`` is a
functions-framework HTTP target (a Flask request in, a Flask response out).

It only translates. The path comes from the raw request line the server keeps
(``RAW_URI`` under gunicorn, which functions-framework runs in production), because a
signature covers the path exactly as the client sent it and Flask's ``request.path`` is
decoded; the authority is the Host header's (an absolute-form target's, if any). The
body is read through
``request.stream`` up to the endpoint's limit and never further, with the WSGI
adapter's reader: a body that arrives incomplete, fails to read or stalls is answered
400, never passed on. Flask is imported when a target is made, not when this module is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.endpoint import Endpoint
from ..core.errors import DispatchletError
from ..core.http import Response
from .wsgi import DEFAULT_BODY_TIMEOUT, read_body, request_from_environ

if TYPE_CHECKING:
    import flask


def cloud_function(
    endpoint: Endpoint, *, body_timeout: float | None = DEFAULT_BODY_TIMEOUT
) -> Callable[[flask.Request], flask.Response]:
    """A functions-framework HTTP target serving ``endpoint``.

    ``body_timeout``: the longest pause, in seconds, while a request body arrives, after
    which the request is answered 400, as in ``wsgi_app``: it applies under gunicorn,
    which functions-framework runs, whose threads would otherwise wait on a client that
    stops sending. None leaves the socket alone.
    """
    from flask import Response as FlaskResponse

    endpoint.warn_if_no_key()

    # functions-framework accepts only plain functions as targets, hence a closure.
    def run(request: flask.Request) -> flask.Response:
        environ = request.environ
        try:
            # request.stream ends at Content-Length; a chunked body reaches its end only
            # when the server terminates the stream (gunicorn does), otherwise Werkzeug
            # makes it empty.
            reader = endpoint.body_reader(environ.get("CONTENT_LENGTH"), ends_without_length=True)
            body = read_body(environ, request.stream, reader, body_timeout)
        except DispatchletError as exc:
            # functions-framework reads whatever body is left after a response unless
            # the response is streamed; an iterable body keeps an oversized or broken
            # request out of memory and leaves the rest to the server, which discards
            # it or closes the connection.
            return _flask_response(FlaskResponse, endpoint.reject(exc), streamed=True)
        response = endpoint.handle(request_from_environ(environ, body))
        return _flask_response(FlaskResponse, response)

    return run


def _flask_response(
    factory: type[flask.Response], response: Response, *, streamed: bool = False
) -> flask.Response:
    if not streamed:
        # Werkzeug sets Content-Length from a bytes body.
        return factory(response.body, status=response.status, headers=response.headers)
    headers = [*response.headers, ("Content-Length", str(len(response.body)))]
    return factory(iter((response.body,)), status=response.status, headers=headers)
