"""Running an app's Endpoint as a process: finding the Endpoint an APP argument names,
and serving it on waitress with settings that bound what clients can hold. Used by the
command line and by the deploy recipes (deploy/wsgi/serve_waitress.py)."""
