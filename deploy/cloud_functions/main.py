"""The functions-framework source of the example function: target ``run``.

functions-framework puts this folder on ``sys.path``, so ``hello`` is the example app
beside this file (a copy of examples/hello.py). The endpoint reads its key from
``DISPATCH_VERIFICATION_KEY`` and its public URL from ``DISPATCH_ENDPOINT_URL``.
"""

from __future__ import annotations

from dispatchlet.adapters.cloud_functions import cloud_function
from hello import endpoint

run = cloud_function(endpoint)
