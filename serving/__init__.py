"""Running an app's Endpoint as a process: finding the Endpoint an APP argument names,
and serving it: on the command line's own HTTP server (``thread_server``: a thread per
connection, which has the Endpoint handle the requests it reads), or on waitress with
settings that bound what clients can hold (the deploy recipe,
deploy/wsgi/serve_waitress.py)."""
