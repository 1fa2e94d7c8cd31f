"""Deploy an app to AWS Lambda with boto3, without CloudFormation.

    python deploy/aws/deploy.py --function-name my-functions \\
        --app-dir ~/myproject --handler main:handler \\
        --role-arn arn:aws:iam::123456789012:role/my-functions \\
        --verification-key-parameter /dispatchlet/verification-key [--region eu-west-1]

The app is the folder ``--app-dir`` (default: this repository's examples/), packaged by
lambda_package.py with its requirements.txt; ``--handler`` names its
``handler = lambda_handler(endpoint)`` as MODULE:ATTR (default: the example's
lambda_app:handler). ``--dry-run`` prints what would be done, with no AWS call and no
build.

Creates or updates the function, its public Function URL (AuthType NONE: each request is
authenticated by the scheduler's signature) and its environment: DISPATCH_VERIFICATION_KEY
read from SSM, DISPATCH_ENDPOINT_URL set to the Function URL. Running it again changes
nothing unless something differs; the code is uploaded only when its hash changed.
Its logs are JSON at INFO level (LoggingConfig), so that the adapter's line per
invocation shows, with its fields. Prints the Function URL and the function ARN, both
valid endpoints for the scheduler (``dispatchlet scheduler``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lambda_package

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import app_files  # deploy/shared: the packagers' one rule

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_lambda.literals import ArchitectureType, RuntimeType
    from mypy_boto3_lambda.type_defs import FunctionConfigurationTypeDef, LoggingConfigTypeDef
    from mypy_boto3_ssm import SSMClient

VERIFICATION_KEY_ENV = "DISPATCH_VERIFICATION_KEY"
ENDPOINT_URL_ENV = "DISPATCH_ENDPOINT_URL"
# The permissions a public Function URL needs: the URL action, and (for URLs created
# since October 2025) InvokeFunction restricted to calls through the URL. The first id is
# the Lambda console's; a statement granting the same under any id counts (``grants``).
URL_PERMISSION_SID = "FunctionURLAllowPublicAccess"
URL_INVOKE_PERMISSION_SID = "FunctionURLAllowInvokeAction"
INVOKER_PERMISSION_SID = "DispatchInvoke"
# ZipFile uploads are limited to 50 MB; larger packages must go through S3.
MAX_ZIP_BYTES = 50 * 1024 * 1024
# The adapter logs one summary line per invocation at INFO, with its fields as `extra`.
# Under Lambda's default text format the runtime leaves the root logger at WARNING, so
# those lines are dropped, and a text line would not show the fields anyway: JSON at
# INFO shows each line with its fields as JSON keys.
LOGGING_CONFIG: LoggingConfigTypeDef = {"LogFormat": "JSON", "ApplicationLogLevel": "INFO"}


class DeployError(Exception):
    """A deployment step failed for a reason the user can act on."""


@dataclass(frozen=True)
class Settings:
    """What the function should look like once deployed."""

    function_name: str
    role_arn: str
    verification_key_parameter: str
    architecture: str = lambda_package.ARCHITECTURE
    runtime: str = lambda_package.RUNTIME
    handler: str = lambda_package.HANDLER
    memory_size: int = 512
    timeout: int = 30
    # An AWS account ID or IAM role ARN allowed to invoke the function by its ARN.
    invoker: str | None = None
    # The public base URL when a custom domain or CDN stands in front (default: the
    # Function URL): signatures are checked against its host and path.
    endpoint_url: str | None = None


@dataclass
class Deployment:
    """The deployed function, and what this run changed (empty: nothing)."""

    function_arn: str
    function_url: str
    changes: list[str] = field(default_factory=list)


def code_sha256(code: bytes) -> str:
    """The hash Lambda reports as CodeSha256: base64 of the zip's SHA-256."""
    return base64.b64encode(hashlib.sha256(code).digest()).decode("ascii")


def read_verification_key(ssm: SSMClient, name: str) -> str:
    """The verification key stored in the SSM parameter ``name``."""
    try:
        value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"].get("Value", "")
    except ssm.exceptions.ParameterNotFound:
        raise DeployError(
            f"SSM parameter {name!r} not found in this account and region; store the "
            "scheduler's public key (verification-key.pem of `dispatchlet keygen`) first: "
            f"aws ssm put-parameter --name {name} --type String "
            '--value "$(cat keys/verification-key.pem)"'
        ) from None
    if not value.strip():
        raise DeployError(f"SSM parameter {name!r} is empty: it must hold the verification key")
    return value


def deploy(
    settings: Settings, code: bytes, *, lambda_client: LambdaClient, ssm_client: SSMClient
) -> Deployment:
    """Create or update the function, its Function URL and permissions, idempotently."""
    if len(code) > MAX_ZIP_BYTES:
        raise DeployError(
            f"the package is {len(code) / 2**20:.1f} MiB; direct upload is limited to 50 MB"
        )
    key = read_verification_key(ssm_client, settings.verification_key_parameter)
    name = settings.function_name
    changes: list[str] = []

    current = _get_function(lambda_client, name)
    if current is None:
        current = _create_function(lambda_client, settings, code, key)
        changes.append("created function")
    else:
        # An update still in progress would make the next update fail.
        _wait(lambda_client, "function_updated_v2", name)

    # Without Lambda's trailing slash: the base the scheduler appends the RPC path to.
    url = _ensure_function_url(lambda_client, name, changes).rstrip("/")
    _ensure_permissions(lambda_client, settings, changes)

    variables = {
        **_variables(current),
        VERIFICATION_KEY_ENV: key,
        ENDPOINT_URL_ENV: settings.endpoint_url or url,
    }
    desired: dict[str, Any] = {
        "Role": settings.role_arn,
        "Handler": settings.handler,
        "Runtime": settings.runtime,
        "MemorySize": settings.memory_size,
        "Timeout": settings.timeout,
    }
    differing = sorted(k for k, v in desired.items() if current.get(k) != v)
    if _variables(current) != variables:
        differing.append("Environment")
    logging = dict(current.get("LoggingConfig", {}))
    if any(logging.get(k) != v for k, v in dict(LOGGING_CONFIG).items()):
        differing.append("LoggingConfig")
    if differing:
        lambda_client.update_function_configuration(
            FunctionName=name,
            Environment={"Variables": variables},
            LoggingConfig=LOGGING_CONFIG,
            **desired,
        )
        _wait(lambda_client, "function_updated_v2", name)
        if "created function" not in changes:
            changes.append(f"updated configuration ({', '.join(differing)})")

    architectures = [_architecture(settings)]
    if current.get("CodeSha256") != code_sha256(code) or (
        list(current.get("Architectures", ["x86_64"])) != architectures
    ):
        lambda_client.update_function_code(
            FunctionName=name, ZipFile=code, Architectures=architectures
        )
        _wait(lambda_client, "function_updated_v2", name)
        changes.append("updated code")

    return Deployment(function_arn=current["FunctionArn"], function_url=url, changes=changes)


def _get_function(client: LambdaClient, name: str) -> FunctionConfigurationTypeDef | None:
    try:
        return client.get_function(FunctionName=name)["Configuration"]
    except client.exceptions.ResourceNotFoundException:
        return None


def _create_function(
    client: LambdaClient, settings: Settings, code: bytes, key: str
) -> FunctionConfigurationTypeDef:
    client.create_function(
        FunctionName=settings.function_name,
        Runtime=cast("RuntimeType", settings.runtime),
        Role=settings.role_arn,
        Handler=settings.handler,
        Code={"ZipFile": code},
        Architectures=[_architecture(settings)],
        MemorySize=settings.memory_size,
        Timeout=settings.timeout,
        Environment={"Variables": {VERIFICATION_KEY_ENV: key}},
        LoggingConfig=LOGGING_CONFIG,
        Description="Dispatch function endpoint (dispatchlet)",
    )
    # A new function accepts no other change until it is active.
    _wait(client, "function_active_v2", settings.function_name)
    return client.get_function(FunctionName=settings.function_name)["Configuration"]


def _architecture(settings: Settings) -> ArchitectureType:
    if settings.architecture == "arm64":
        return "arm64"
    if settings.architecture == "x86_64":
        return "x86_64"
    raise DeployError(f"unknown architecture {settings.architecture!r}: arm64 or x86_64")


def _wait(client: LambdaClient, waiter: str, name: str) -> None:
    client.get_waiter(waiter).wait(  # type: ignore[call-overload]
        FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150}
    )


def _variables(configuration: FunctionConfigurationTypeDef) -> dict[str, str]:
    return dict(configuration.get("Environment", {}).get("Variables", {}))


def _ensure_function_url(client: LambdaClient, name: str, changes: list[str]) -> str:
    try:
        config = client.get_function_url_config(FunctionName=name)
    except client.exceptions.ResourceNotFoundException:
        created = client.create_function_url_config(FunctionName=name, AuthType="NONE")
        changes.append("created Function URL")
        return created["FunctionUrl"]
    if config["AuthType"] != "NONE":
        # The scheduler does not sign with SigV4: an IAM-authenticated URL refuses it.
        client.update_function_url_config(FunctionName=name, AuthType="NONE")
        changes.append("set Function URL AuthType to NONE")
    return config["FunctionUrl"]


def _statements(client: LambdaClient, name: str) -> list[dict[str, Any]]:
    try:
        policy = client.get_policy(FunctionName=name)["Policy"]
    except client.exceptions.ResourceNotFoundException:
        return []  # no resource policy yet
    statements = json.loads(policy).get("Statement", [])
    return [s for s in statements if isinstance(s, dict)]


def grants(
    statement: Mapping[str, Any], action: str, principal: str, condition: tuple[str, str] | None
) -> bool:
    """Whether a resource policy statement allows ``action`` to ``principal`` on the
    condition ``(key, value)``, in the shape Lambda's GetPolicy returns."""
    if statement.get("Effect", "Allow") != "Allow" or statement.get("Action") != action:
        return False
    if _principal(statement.get("Principal")) != _principal(principal):
        return False
    if condition is None:
        return True
    key, value = condition
    for clause in (statement.get("Condition") or {}).values():
        if isinstance(clause, dict) and str(clause.get(key, "")).lower() == value.lower():
            return True
    return False


def _principal(value: object) -> str:
    """A principal as GetPolicy may show it: "*", {"AWS": arn}, {"Service": name}."""
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    text = str(value)
    # An account ID is shown as its root ARN.
    if text.startswith("arn:") and text.endswith(":root"):
        return text.split(":")[4]
    return text


def _ensure_permissions(client: LambdaClient, settings: Settings, changes: list[str]) -> None:
    name = settings.function_name
    statements = _statements(client, name)
    sids = {s.get("Sid") for s in statements}

    def missing(sid: str, action: str, principal: str, cond: tuple[str, str] | None) -> bool:
        if sid in sids:
            return False
        return not any(grants(s, action, principal, cond) for s in statements)

    url_auth = ("lambda:FunctionUrlAuthType", "NONE")
    if missing(URL_PERMISSION_SID, "lambda:InvokeFunctionUrl", "*", url_auth):
        client.add_permission(
            FunctionName=name,
            StatementId=URL_PERMISSION_SID,
            Action="lambda:InvokeFunctionUrl",
            Principal="*",
            FunctionUrlAuthType="NONE",
        )
        changes.append("allowed public access to the Function URL")
    via_url = ("lambda:InvokedViaFunctionUrl", "true")
    if missing(URL_INVOKE_PERMISSION_SID, "lambda:InvokeFunction", "*", via_url):
        client.add_permission(
            FunctionName=name,
            StatementId=URL_INVOKE_PERMISSION_SID,
            Action="lambda:InvokeFunction",
            Principal="*",
            InvokedViaFunctionUrl=True,
        )
        changes.append("allowed invocation through the Function URL")
    invoker = settings.invoker
    if invoker and missing(INVOKER_PERMISSION_SID, "lambda:InvokeFunction", invoker, None):
        client.add_permission(
            FunctionName=name,
            StatementId=INVOKER_PERMISSION_SID,
            Action="lambda:InvokeFunction",
            Principal=invoker,
        )
        changes.append(f"allowed {invoker} to invoke the function")


def _clients(region: str | None) -> tuple[LambdaClient, SSMClient]:
    import boto3  # here: `--help` works without boto3 installed

    session = boto3.session.Session(region_name=region)
    if session.region_name is None:
        raise DeployError("no AWS region: pass --region or set AWS_REGION")
    return session.client("lambda"), session.client("ssm")


def _package(
    zip_path: Path | None,
    architecture: str,
    app_dir: Path,
    handler: str,
    exclude: Sequence[str] = (),
) -> bytes:
    if zip_path is not None:
        try:
            return zip_path.read_bytes()
        except OSError as exc:
            raise DeployError(f"cannot read {zip_path}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="dispatchlet-deploy-") as folder:
        built = Path(folder, "function.zip")
        try:
            lambda_package.build_zip(
                built, architecture=architecture, app_dir=app_dir, handler=handler, exclude=exclude
            )
        except lambda_package.PackageError as exc:
            raise DeployError(f"packaging failed: {exc}") from None
        return built.read_bytes()


def plan(settings: Settings, args: argparse.Namespace) -> list[str]:
    """What a deploy with these settings does, step by step, as printed by --dry-run."""
    region = args.region or "<the AWS configuration's region>"
    if args.zip is not None:
        package = f"1. Upload the package {args.zip}"
    else:
        build = [
            "python",
            str(Path(lambda_package.__file__).resolve()),
            "--zip",
            "<package.zip>",
            f"--app-dir={args.app_dir}",
            f"--handler={args.handler}",
            f"--architecture={settings.architecture}",
            *(f"--exclude={pattern}" for pattern in args.exclude),
        ]
        package = f"1. Package the app: {shlex.join(build)}"
    steps = [
        package,
        f"2. Read the verification key from the SSM parameter "
        f"{settings.verification_key_parameter!r} in {region}",
        f"3. Create or update the function {settings.function_name!r}: "
        f"runtime {settings.runtime}, {settings.architecture}, handler {settings.handler}, "
        f"{settings.memory_size} MB, {settings.timeout} s, role {settings.role_arn}, "
        f"logs in JSON at INFO",
        "4. Create its Function URL if it has none (AuthType NONE) and allow public "
        "invocation through it",
    ]
    if settings.invoker:
        steps.append(f"5. Allow {settings.invoker} to invoke the function by its ARN")
    url = settings.endpoint_url or "<its Function URL>"
    steps.append(
        f"{len(steps) + 1}. Set DISPATCH_VERIFICATION_KEY (from SSM) and "
        f"DISPATCH_ENDPOINT_URL={url}; upload the code if its hash changed"
    )
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--function-name", required=True)
    parser.add_argument(
        "--role-arn", required=True, help="execution role (AWSLambdaBasicExecutionRole or more)"
    )
    parser.add_argument(
        "--verification-key-parameter",
        required=True,
        help="SSM parameter holding the scheduler's public key (String or SecureString)",
    )
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument(
        "--app-dir",
        type=Path,
        default=lambda_package.APP_DIR,
        help="the app's folder, packaged with its requirements.txt (default: examples/)",
    )
    parser.add_argument(
        "--handler",
        default=lambda_package.HANDLER,
        help=f"the app's Lambda handler, MODULE:ATTR (default: {lambda_package.HANDLER})",
    )
    parser.add_argument("--zip", type=Path, help="deploy this prebuilt package zip")
    app_files.add_exclude_argument(parser)
    parser.add_argument(
        "--architecture", choices=("arm64", "x86_64"), default=lambda_package.ARCHITECTURE
    )
    parser.add_argument("--memory-size", type=int, default=512, help="MB (default 512)")
    parser.add_argument("--timeout", type=int, default=30, help="seconds (default 30)")
    parser.add_argument(
        "--invoker",
        help="AWS account ID or IAM role ARN allowed to invoke the function by its ARN",
    )
    parser.add_argument(
        "--endpoint-url",
        help="public base URL when a custom domain or CDN fronts the function "
        "(DISPATCH_ENDPOINT_URL; default: the Function URL)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be done: no AWS call, no build"
    )
    args = parser.parse_args(argv)
    try:
        # Local and quick, so before anything else: a handler the app does not have.
        handler = (
            lambda_package.lambda_handler_name(args.handler)
            if args.zip is not None
            else lambda_package.check_handler(args.app_dir.resolve(), args.handler)
        )
    except lambda_package.PackageError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    settings = Settings(
        function_name=args.function_name,
        role_arn=args.role_arn,
        verification_key_parameter=args.verification_key_parameter,
        architecture=args.architecture,
        memory_size=args.memory_size,
        timeout=args.timeout,
        invoker=args.invoker,
        endpoint_url=args.endpoint_url,
        handler=handler,
    )
    if args.dry_run:
        print("\n".join(plan(settings, args)))
        return 0
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        lambda_client, ssm_client = _clients(args.region)
        # Before the slow packaging: a missing key parameter is the likeliest mistake.
        read_verification_key(ssm_client, settings.verification_key_parameter)
        code = _package(
            args.zip, settings.architecture, args.app_dir.resolve(), args.handler, args.exclude
        )
        result = deploy(settings, code, lambda_client=lambda_client, ssm_client=ssm_client)
    except DeployError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as exc:
        print(f"deploy: AWS error: {exc}", file=sys.stderr)
        return 1
    for change in result.changes or ["no changes"]:
        print(f"- {change}")
    print(f"Function URL: {result.function_url}")
    print(f"Function ARN: {result.function_arn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
