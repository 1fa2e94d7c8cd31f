"""deploy/aws/deploy.py against moto: create, idempotent re-runs, code and key changes."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest
from support import load_script

ROOT = Path(__file__).resolve().parent.parent
AWS_DIR = ROOT / "deploy" / "aws"
KEY_PARAMETER = "/dispatchlet/verification-key"
KEY = "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
FUNCTION = "dispatchlet-hello"
# The calls that change something; an idempotent re-run makes none of them.
WRITES = {
    "CreateFunction",
    "UpdateFunctionCode",
    "UpdateFunctionConfiguration",
    "CreateFunctionUrlConfig",
    "UpdateFunctionUrlConfig",
    "AddPermission",
    "RemovePermission",
}


# deploy.py imports its neighbour as a script would.
lambda_package = load_script("lambda_package", AWS_DIR / "lambda_package.py")
aws_deploy = load_script("dispatchlet_aws_deploy", AWS_DIR / "deploy.py")


def package(source: str) -> bytes:
    """A small stand-in package: these tests are about the control plane, not the code."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("lambda_app.py", source)
    return buffer.getvalue()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto's AWS with an execution role and the key parameter; clients, and a log of
    the Lambda operations called."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        role = boto3.client("iam").create_role(
            RoleName="dispatchlet-hello", AssumeRolePolicyDocument=json.dumps(trust)
        )
        ssm = boto3.client("ssm")
        ssm.put_parameter(Name=KEY_PARAMETER, Type="String", Value=KEY)
        lambda_client = boto3.client("lambda")
        calls: list[str] = []
        requests: list[tuple[str, dict[str, Any]]] = []

        def record(model: Any, params: dict[str, Any], **_: Any) -> None:
            calls.append(model.name)
            requests.append((model.name, params))

        # Called with the operation's arguments, as the code passed them.
        lambda_client.meta.events.register("provide-client-params.lambda.*", record)
        emulate_logging_config(lambda_client)
        # The command line's calls go through these clients too, emulation included.
        monkeypatch.setattr(aws_deploy, "_clients", lambda region: (lambda_client, ssm))
        yield {
            "role": role["Role"]["Arn"],
            "ssm": ssm,
            "lambda": lambda_client,
            "calls": calls,
            "requests": requests,
        }


def emulate_logging_config(client: Any) -> None:
    """Keep each function's LoggingConfig as Lambda does, and show it in GetFunction:
    moto accepts the setting but neither stores nor returns it."""
    kept: dict[str, dict[str, str]] = {}

    def remember(params: dict[str, Any], **_: Any) -> None:
        if "LoggingConfig" in params:
            name = params["FunctionName"]
            kept[name] = {**kept.get(name, {}), **params["LoggingConfig"]}

    def show(parsed: dict[str, Any], **_: Any) -> None:
        config = parsed.get("Configuration")
        if not config:
            return
        name = config["FunctionName"]
        logging = {"LogFormat": "Text", **kept.get(name, {})}
        if logging["LogFormat"] == "JSON":  # Lambda's levels for JSON when none is given
            logging = {"ApplicationLogLevel": "INFO", "SystemLogLevel": "INFO", **logging}
        config["LoggingConfig"] = {**logging, "LogGroup": f"/aws/lambda/{name}"}

    for operation in ("CreateFunction", "UpdateFunctionConfiguration"):
        client.meta.events.register(f"provide-client-params.lambda.{operation}", remember)
    client.meta.events.register("after-call.lambda.GetFunction", show)


def settings(aws: dict[str, Any], **changes: Any) -> Any:
    return aws_deploy.Settings(
        function_name=FUNCTION,
        role_arn=aws["role"],
        verification_key_parameter=KEY_PARAMETER,
        **changes,
    )


def deploy(aws: dict[str, Any], code: bytes, **changes: Any) -> Any:
    aws["calls"].clear()
    aws["requests"].clear()
    return aws_deploy.deploy(
        settings(aws, **changes), code, lambda_client=aws["lambda"], ssm_client=aws["ssm"]
    )


def configuration(aws: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = aws["lambda"].get_function(FunctionName=FUNCTION)["Configuration"]
    return result


def statements(aws: dict[str, Any]) -> list[dict[str, Any]]:
    policy = aws["lambda"].get_policy(FunctionName=FUNCTION)["Policy"]
    result: list[dict[str, Any]] = json.loads(policy)["Statement"]
    return result


def test_first_deploy_creates_the_function_url_and_environment(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    result = deploy(aws, code)

    config = configuration(aws)
    assert config["Runtime"] == "python3.12"
    assert config["Handler"] == "lambda_app.handler"
    assert config["Architectures"] == ["arm64"]
    assert config["Role"] == aws["role"]
    assert config["CodeSha256"] == aws_deploy.code_sha256(code)
    assert result.function_arn == config["FunctionArn"]
    assert result.function_arn.startswith("arn:aws:lambda:us-east-1:")

    url = aws["lambda"].get_function_url_config(FunctionName=FUNCTION)
    assert url["AuthType"] == "NONE"
    # The base URL the scheduler appends the RPC path to.
    assert result.function_url == url["FunctionUrl"].rstrip("/")
    assert config["Environment"]["Variables"] == {
        "DISPATCH_VERIFICATION_KEY": KEY,
        "DISPATCH_ENDPOINT_URL": result.function_url,
    }
    # Anyone may call the URL (the signature authenticates), and only through it.
    granted = {(s["Action"], s["Principal"]) for s in statements(aws)}
    assert granted == {("lambda:InvokeFunctionUrl", "*"), ("lambda:InvokeFunction", "*")}
    assert "created function" in result.changes


def test_logs_are_json_at_info_level_so_the_invocation_summary_shows(
    aws: dict[str, Any],
) -> None:
    """The adapter logs its line per invocation at INFO: Lambda's default text format
    leaves the root logger at WARNING and drops it."""
    deploy(aws, package("handler = None\n"))
    created = dict(aws["requests"])["CreateFunction"]
    assert created["LoggingConfig"] == {"LogFormat": "JSON", "ApplicationLogLevel": "INFO"}
    logging = configuration(aws)["LoggingConfig"]
    assert logging["LogFormat"] == "JSON"
    assert logging["ApplicationLogLevel"] == "INFO"


def test_a_function_with_text_logs_is_switched_to_json_at_info(aws: dict[str, Any]) -> None:
    """A function deployed before (text logs, the default) gets the logging settings."""
    code = package("handler = None\n")
    aws["lambda"].create_function(
        FunctionName=FUNCTION,
        Runtime="python3.12",
        Role=aws["role"],
        Handler="lambda_app.handler",
        Code={"ZipFile": code},
        Architectures=["arm64"],
    )
    assert configuration(aws)["LoggingConfig"]["LogFormat"] == "Text"

    result = deploy(aws, code)

    updated = dict(aws["requests"])["UpdateFunctionConfiguration"]
    assert updated["LoggingConfig"] == {"LogFormat": "JSON", "ApplicationLogLevel": "INFO"}
    assert any("LoggingConfig" in change for change in result.changes), result.changes
    assert configuration(aws)["LoggingConfig"]["LogFormat"] == "JSON"
    assert deploy(aws, code).changes == []


def test_second_deploy_changes_nothing(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    first = deploy(aws, code)
    before = configuration(aws)

    second = deploy(aws, code)

    assert second.changes == []
    assert not WRITES & set(aws["calls"]), aws["calls"]
    assert second.function_url == first.function_url
    assert second.function_arn == first.function_arn
    assert configuration(aws)["CodeSha256"] == before["CodeSha256"]
    sids = [s["Sid"] for s in statements(aws)]
    assert len(sids) == len(set(sids)) == 2


def test_changed_code_updates_only_the_code(aws: dict[str, Any]) -> None:
    deploy(aws, package("handler = None\n"))
    environment = configuration(aws)["Environment"]
    changed = package("handler = 'new'\n")

    result = deploy(aws, changed)

    assert result.changes == ["updated code"]
    assert set(aws["calls"]) & WRITES == {"UpdateFunctionCode"}
    assert configuration(aws)["CodeSha256"] == aws_deploy.code_sha256(changed)
    assert configuration(aws)["Environment"] == environment


def test_rotated_key_in_ssm_updates_the_environment(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    deploy(aws, code)
    rotated = KEY + "," + "GB9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
    aws["ssm"].put_parameter(Name=KEY_PARAMETER, Value=rotated, Overwrite=True)

    result = deploy(aws, code)

    assert result.changes == ["updated configuration (Environment)"]
    assert configuration(aws)["Environment"]["Variables"]["DISPATCH_VERIFICATION_KEY"] == rotated


def test_secure_string_parameter_is_read_decrypted(aws: dict[str, Any]) -> None:
    aws["ssm"].put_parameter(Name=KEY_PARAMETER, Value=KEY, Type="SecureString", Overwrite=True)
    deploy(aws, package("handler = None\n"))
    assert configuration(aws)["Environment"]["Variables"]["DISPATCH_VERIFICATION_KEY"] == KEY


def test_other_environment_variables_are_kept(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    deploy(aws, code)
    variables = {**configuration(aws)["Environment"]["Variables"], "LOG_LEVEL": "DEBUG"}
    aws["lambda"].update_function_configuration(
        FunctionName=FUNCTION, Environment={"Variables": variables}
    )

    assert deploy(aws, code).changes == []
    assert configuration(aws)["Environment"]["Variables"]["LOG_LEVEL"] == "DEBUG"


def test_settings_changes_update_the_configuration(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    deploy(aws, code)
    result = deploy(aws, code, memory_size=1024, timeout=60)
    assert result.changes == ["updated configuration (MemorySize, Timeout)"]
    config = configuration(aws)
    assert (config["MemorySize"], config["Timeout"]) == (1024, 60)


def test_architecture_change_reuploads_the_code(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    deploy(aws, code)
    result = deploy(aws, code, architecture="x86_64")
    assert result.changes == ["updated code"]
    # moto keeps the first architecture; the request is what Lambda acts on.
    updates = [params for name, params in aws["requests"] if name == "UpdateFunctionCode"]
    assert len(updates) == 1
    assert updates[0]["Architectures"] == ["x86_64"]


def test_custom_domain_sets_the_endpoint_url(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    first = deploy(aws, code)
    result = deploy(aws, code, endpoint_url="https://jobs.example.com")
    assert result.changes == ["updated configuration (Environment)"]
    variables = configuration(aws)["Environment"]["Variables"]
    assert variables["DISPATCH_ENDPOINT_URL"] == "https://jobs.example.com"
    assert result.function_url == first.function_url


def test_iam_authenticated_url_is_made_public(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    deploy(aws, code)
    aws["lambda"].update_function_url_config(FunctionName=FUNCTION, AuthType="AWS_IAM")

    result = deploy(aws, code)

    assert result.changes == ["set Function URL AuthType to NONE"]
    assert aws["lambda"].get_function_url_config(FunctionName=FUNCTION)["AuthType"] == "NONE"


def test_invoker_is_allowed_once(aws: dict[str, Any]) -> None:
    code = package("handler = None\n")
    deploy(aws, code, invoker="123456789012")
    deploy(aws, code, invoker="123456789012")
    invokers = [s for s in statements(aws) if s["Sid"] == aws_deploy.INVOKER_PERMISSION_SID]
    assert len(invokers) == 1
    assert invokers[0]["Action"] == "lambda:InvokeFunction"


def test_missing_parameter_is_a_clear_error_before_anything_is_built(
    aws: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    aws["ssm"].delete_parameter(Name=KEY_PARAMETER)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("packaging started before the key was found")

    monkeypatch.setattr(lambda_package, "build_zip", no_build)
    status = aws_deploy.main(
        [
            "--function-name",
            FUNCTION,
            "--role-arn",
            aws["role"],
            "--verification-key-parameter",
            KEY_PARAMETER,
        ]
    )

    assert status == 1
    error = capsys.readouterr().err
    assert f"SSM parameter '{KEY_PARAMETER}' not found" in error
    assert "aws ssm put-parameter" in error
    assert aws["lambda"].list_functions()["Functions"] == []


def test_cli_prints_the_url_and_arn(
    aws: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    zip_path = tmp_path / "function.zip"
    zip_path.write_bytes(package("handler = None\n"))
    arguments = [
        "--function-name",
        FUNCTION,
        "--role-arn",
        aws["role"],
        "--verification-key-parameter",
        KEY_PARAMETER,
        "--region",
        "us-east-1",
        "--zip",
        str(zip_path),
    ]

    assert aws_deploy.main(arguments) == 0
    first = capsys.readouterr().out
    assert aws_deploy.main(arguments) == 0
    second = capsys.readouterr().out

    url = aws["lambda"].get_function_url_config(FunctionName=FUNCTION)["FunctionUrl"]
    url = url.rstrip("/")
    arn = configuration(aws)["FunctionArn"]
    for out in (first, second):
        assert f"Function URL: {url}" in out
        assert f"Function ARN: {arn}" in out
    assert "- created function" in first
    assert "- no changes" in second


def test_console_made_permissions_are_recognised() -> None:
    """Statements as GetPolicy returns them for a URL made in the Lambda console."""
    url_access = {
        "Sid": "FunctionURLAllowPublicAccess",
        "Effect": "Allow",
        "Principal": "*",
        "Action": "lambda:InvokeFunctionUrl",
        "Resource": "arn:aws:lambda:us-east-1:123456789012:function:f",
        "Condition": {"StringEquals": {"lambda:FunctionUrlAuthType": "NONE"}},
    }
    via_url = {
        "Sid": "some-other-id",
        "Effect": "Allow",
        "Principal": "*",
        "Action": "lambda:InvokeFunction",
        "Resource": "arn:aws:lambda:us-east-1:123456789012:function:f",
        "Condition": {"Bool": {"lambda:InvokedViaFunctionUrl": "true"}},
    }
    account = {
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
        "Action": "lambda:InvokeFunction",
    }
    grants = aws_deploy.grants
    assert grants(
        url_access, "lambda:InvokeFunctionUrl", "*", ("lambda:FunctionUrlAuthType", "NONE")
    )
    assert grants(via_url, "lambda:InvokeFunction", "*", ("lambda:InvokedViaFunctionUrl", "true"))
    assert grants(account, "lambda:InvokeFunction", "210987654321", None)
    # Narrower or other grants do not count.
    assert not grants(
        url_access, "lambda:InvokeFunctionUrl", "*", ("lambda:FunctionUrlAuthType", "AWS_IAM")
    )
    assert not grants(via_url, "lambda:InvokeFunction", "*", ("lambda:FunctionUrlAuthType", "NONE"))
    assert not grants({**account, "Effect": "Deny"}, "lambda:InvokeFunction", "210987654321", None)
    assert not grants(account, "lambda:InvokeFunction", "*", None)


def user_app(folder: Path) -> Path:
    """An app of the user's, outside this repository."""
    folder.mkdir()
    (folder / "main.py").write_text("handler = None\n")
    return folder


def test_the_users_app_and_handler_are_packaged_and_configured(
    aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = user_app(tmp_path / "myproject")
    built: list[dict[str, Any]] = []

    def build_zip(zip_path: Path, **options: Any) -> Path:
        built.append(options)
        zip_path.write_bytes(package("handler = None\n"))
        return zip_path

    monkeypatch.setattr(lambda_package, "build_zip", build_zip)
    arguments = [
        *("--function-name", FUNCTION, "--role-arn", aws["role"]),
        *("--verification-key-parameter", KEY_PARAMETER),
        *("--app-dir", str(app), "--handler", "main:handler"),
    ]
    assert aws_deploy.main(arguments) == 0
    expected = {"architecture": "arm64", "app_dir": app.resolve(), "handler": "main:handler"}
    assert built == [{**expected, "exclude": []}]
    assert configuration(aws)["Handler"] == "main.handler"


def test_a_handler_missing_from_the_app_stops_before_aws(
    aws: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    app = user_app(tmp_path / "myproject")
    arguments = [
        *("--function-name", FUNCTION, "--role-arn", aws["role"]),
        *("--verification-key-parameter", KEY_PARAMETER, "--app-dir", str(app)),
    ]
    assert aws_deploy.main(arguments) == 1  # the default handler is the example's
    assert "handler module 'lambda_app' not found in" in capsys.readouterr().err
    assert aws["lambda"].list_functions()["Functions"] == []


def test_dry_run_prints_the_plan_and_touches_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def no_aws(*args: object) -> None:
        raise AssertionError("--dry-run called AWS")

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("--dry-run built the package")

    monkeypatch.setattr(aws_deploy, "_clients", no_aws)
    monkeypatch.setattr(lambda_package, "build_zip", no_build)
    app = user_app(tmp_path / "myproject")
    arguments = [
        *("--function-name", FUNCTION, "--role-arn", "arn:aws:iam::123456789012:role/r"),
        *("--verification-key-parameter", KEY_PARAMETER, "--region", "eu-west-1"),
        *("--app-dir", str(app), "--handler", "main:handler", "--invoker", "123456789012"),
        "--dry-run",
    ]
    assert aws_deploy.main(arguments) == 0
    steps = capsys.readouterr().out.splitlines()
    assert steps[0].startswith("1. Package the app: python ")
    assert f"--app-dir={app}" in steps[0]
    assert "--handler=main:handler" in steps[0]
    assert f"SSM parameter '{KEY_PARAMETER}' in eu-west-1" in steps[1]
    assert "handler main.handler" in steps[2]
    assert "Allow 123456789012 to invoke" in steps[4]
    assert "DISPATCH_ENDPOINT_URL=<its Function URL>" in steps[5]
