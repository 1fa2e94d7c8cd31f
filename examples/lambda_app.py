"""The example app on AWS Lambda: template.yaml's Handler is ``lambda_app.handler``.

The package puts this module beside hello.py at its root (deploy/aws/lambda_package.py),
so the app is imported as Lambda's runtime would import it. One handler serves direct
invocation (the function's ARN as the Dispatch endpoint), the Function URL and the
HTTP API.
"""

from __future__ import annotations

from dispatchlet.adapters.aws_lambda import lambda_handler
from hello import endpoint

handler = lambda_handler(endpoint)
