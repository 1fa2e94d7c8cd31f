"""An example app for the WSGI servers: ``gunicorn -c gunicorn.conf.py`` in this folder,
or ``python serve_waitress.py app.py``.

The verification key comes from ``DISPATCH_VERIFICATION_KEY``. Set
``DISPATCH_ENDPOINT_URL`` to the public URL when a proxy in front changes the Host or
the path (see README.md).
"""

from __future__ import annotations

from dispatchlet import Endpoint
from dispatchlet.adapters.wsgi import wsgi_app

endpoint = Endpoint()


@endpoint.function
def greet(name: str) -> str:
    return f"Hello, {name}!"


app = wsgi_app(endpoint)
