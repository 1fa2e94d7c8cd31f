"""template.yaml: it translates and lints clean offline, the check rejects broken copies,
it deploys what users rely on, and its build makes a package Lambda can run."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dispatchlet import Request
from dispatchlet.core import values
from dispatchlet.core.connect import PROTO, RUN_PATH
from dispatchlet.core.signatures import sign_request
from dispatchlet.proto.dispatch.sdk.v1 import function_pb2
from support import load_script

ROOT = Path(__file__).resolve().parent.parent
AWS_DIR = ROOT / "deploy" / "aws"
TEMPLATE = ROOT / "template.yaml"
FUNCTION = "DispatchFunction"


# validate_template.py imports its neighbour as a script would.
lambda_package = load_script("lambda_package", AWS_DIR / "lambda_package.py")
validate_template = load_script(
    "dispatchlet_aws_validate_template", AWS_DIR / "validate_template.py"
)
aws_deploy = load_script("dispatchlet_aws_deploy", AWS_DIR / "deploy.py")


@pytest.fixture(scope="module")
def cloudformation() -> dict[str, Any]:
    """template.yaml translated to CloudFormation (checked clean by the first test)."""
    report = validate_template.validate(TEMPLATE)
    assert report.cloudformation is not None, report.problems
    result: dict[str, Any] = report.cloudformation
    return result


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


# --- validation ------------------------------------------------------------------------


def test_template_is_valid_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Translator and linter run with no AWS account, no region configured and no network."""
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access during template validation")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    report = validate_template.validate(TEMPLATE)

    assert report.problems == []
    assert report.cloudformation is not None
    assert attempts == []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the repository, for edited copies of the template."""
    folder = tmp_path_factory.mktemp("sam")
    for name in ("examples", "deploy"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def edited(workspace: Path, name: str, edit: Callable[[str], str]) -> Path:
    text = TEMPLATE.read_text()
    changed = edit(text)
    assert changed != text, f"the edit {name!r} no longer applies to template.yaml"
    path = workspace / f"{name}.yaml"
    path.write_text(changed)
    return path


def replace(old: str, new: str) -> Callable[[str], str]:
    return lambda text: text.replace(old, new)


def drop_line(start: str) -> Callable[[str], str]:
    return lambda text: re.sub(rf"(?m)^\s*{re.escape(start)}.*\n", "", text, count=1)


# Each broken copy, and a word the report must name: the fault is found for its reason.
BROKEN = {
    "misspelled resource type": (
        replace("Type: AWS::Serverless::Function", "Type: AWS::Serverless::Functoin"),
        "AWS::Serverless::Functoin",
    ),
    "missing Handler": (drop_line("Handler:"), "Handler"),
    "missing CodeUri": (drop_line("CodeUri:"), "CodeUri"),
    "Ref to an unknown parameter": (
        replace("!Ref EndpointUrl", "!Ref EndpointURL"),
        "EndpointURL",
    ),
    "invalid Runtime": (replace("Runtime: python3.12", "Runtime: python3.21"), "python3.21"),
    "invalid architecture": (replace("- arm64", "- arm65"), "arm65"),
    "GetAtt of an unknown resource": (
        replace(
            "!GetAtt DispatchFunctionUrl.FunctionUrl", "!GetAtt DispatchFunctionURL.FunctionUrl"
        ),
        "DispatchFunctionURL",
    ),
    "invalid Function URL AuthType": (replace("AuthType: NONE", "AuthType: OPEN"), "AuthType"),
    "invalid log level": (
        replace("ApplicationLogLevel: INFO", "ApplicationLogLevel: LOUD"),
        "LOUD",
    ),
    "memory over the limit": (replace("MemorySize: 512", "MemorySize: 65536"), "65536"),
    "CodeUri that does not exist": (
        replace("CodeUri: examples/", "CodeUri: exmaples/"),
        "exmaples/",
    ),
    "ContextPath without a Makefile": (
        replace("ContextPath: deploy/aws", "ContextPath: examples"),
        "no Makefile",
    ),
    "function renamed without its Makefile target": (
        replace("DispatchFunction", "HelloFunction"),
        "build-HelloFunction",
    ),
    "YAML syntax error": (replace("Resources:\n", "Resources:\n  - [\n"), "E0000"),
    "Handler whose module is not in CodeUri": (
        replace("Handler: lambda_app.handler", "Handler: lambda_ap.handler"),
        "handler module 'lambda_ap' not found",
    ),
}


def test_unedited_copy_is_valid(workspace: Path) -> None:
    """The control for the broken copies: the same folder, the template unchanged."""
    path = workspace / "template.yaml"
    path.write_text(TEMPLATE.read_text())
    assert validate_template.validate(path).problems == []


def test_a_copy_in_the_users_project_deploying_their_app_is_valid(tmp_path: Path) -> None:
    """What the template says to change for one's own code: CodeUri and Handler, and
    ContextPath when the template moves into the user's project."""
    project = tmp_path / "myproject"
    write_app(project / "src", {"main.py": "handler = None\n"})
    text = TEMPLATE.read_text()
    for old, new in [
        ("CodeUri: examples/", "CodeUri: src/"),
        ("Handler: lambda_app.handler", "Handler: main.handler"),
        ("ContextPath: deploy/aws", f"ContextPath: {AWS_DIR}"),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (project / "template.yaml").write_text(text)
    assert validate_template.validate(project / "template.yaml").problems == []


@pytest.mark.parametrize("fault", sorted(BROKEN))
def test_broken_template_is_rejected(workspace: Path, fault: str) -> None:
    edit, named = BROKEN[fault]
    path = edited(workspace, fault.replace(" ", "-"), edit)
    report = validate_template.validate(path)
    assert not report.ok
    problems = "\n".join(report.problems)
    assert named in problems, problems


def test_cli_exit_status(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_template.main([str(TEMPLATE)]) == 0
    assert "valid" in capsys.readouterr().out
    broken = edited(workspace, "cli", replace("Runtime: python3.12", "Runtime: python3.21"))
    assert validate_template.main([str(broken)]) == 1
    assert "python3.21" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_a_script(workspace: Path) -> None:
    broken = edited(workspace, "script", drop_line("Handler:"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [sys.executable, str(AWS_DIR / "validate_template.py"), str(broken)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "Handler" in result.stderr
    assert "Traceback" not in result.stderr


# --- the contract ------------------------------------------------------------------------


def function(cloudformation: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = cloudformation["Resources"][FUNCTION]
    assert resource["Type"] == "AWS::Lambda::Function"
    properties: dict[str, Any] = resource["Properties"]
    return properties


def test_function_runs_the_packaged_example_app(cloudformation: dict[str, Any]) -> None:
    properties = function(cloudformation)
    # The same runtime, architecture and handler as the package the build makes.
    assert properties["Runtime"] == lambda_package.RUNTIME
    assert properties["Architectures"] == [lambda_package.ARCHITECTURE]
    assert properties["Handler"] == lambda_package.HANDLER
    module, attribute = properties["Handler"].split(".")
    assert lambda_package.check_handler(ROOT / "examples", properties["Handler"])
    assert re.search(rf"(?m)^{attribute} = ", (ROOT / "examples" / f"{module}.py").read_text())
    assert 128 <= properties["MemorySize"] <= 3008
    assert properties["Timeout"] <= 30  # the HTTP API's integration limit


def test_logs_are_json_at_info_level_as_deploy_py_sets_them(
    cloudformation: dict[str, Any],
) -> None:
    """The adapter's line per invocation is at INFO: Lambda's text format drops it."""
    logging = function(cloudformation)["LoggingConfig"]
    assert logging["LogFormat"] == aws_deploy.LOGGING_CONFIG["LogFormat"] == "JSON"
    assert logging["ApplicationLogLevel"] == aws_deploy.LOGGING_CONFIG["ApplicationLogLevel"]
    assert logging["ApplicationLogLevel"] == "INFO"
    assert logging["LogGroup"] == {"Ref": "DispatchFunctionLogs"}


def test_sam_build_runs_the_makefile_target() -> None:
    text = TEMPLATE.read_text()
    assert "BuildMethod: makefile" in text
    makefile = (AWS_DIR / "Makefile").read_text()
    assert re.search(rf"(?m)^build-{FUNCTION}:", makefile)


def test_function_url_is_public(cloudformation: dict[str, Any]) -> None:
    (url,) = resources_of_type(cloudformation, "AWS::Lambda::Url").values()
    assert url["Properties"]["AuthType"] == "NONE"
    assert url["Properties"]["TargetFunctionArn"] == {"Ref": FUNCTION}
    permissions = [
        p["Properties"]
        for p in resources_of_type(cloudformation, "AWS::Lambda::Permission").values()
    ]
    assert {
        "Action": "lambda:InvokeFunctionUrl",
        "FunctionName": {"Ref": FUNCTION},
        "Principal": "*",
        "FunctionUrlAuthType": "NONE",
    } in permissions


def test_http_api_routes_run_to_the_function(cloudformation: dict[str, Any]) -> None:
    (api,) = resources_of_type(cloudformation, "AWS::ApiGatewayV2::Api").values()
    paths = api["Properties"]["Body"]["paths"]
    assert list(paths) == ["/dispatch.sdk.v1.FunctionService/Run"]
    route = paths["/dispatch.sdk.v1.FunctionService/Run"]
    assert list(route) == ["post"]
    integration = route["post"]["x-amazon-apigateway-integration"]
    assert integration["payloadFormatVersion"] == "2.0"
    assert f"${{{FUNCTION}.Arn}}" in json.dumps(integration["uri"])
    # The $default stage puts no prefix before the path the scheduler signs.
    (stage,) = resources_of_type(cloudformation, "AWS::ApiGatewayV2::Stage").values()
    assert stage["Properties"]["StageName"] == "$default"


def test_verification_key_comes_from_ssm(cloudformation: dict[str, Any]) -> None:
    parameter = cloudformation["Parameters"]["VerificationKeyParameter"]
    assert parameter["Type"] == "AWS::SSM::Parameter::Value<String>"
    assert parameter["Default"] == "/dispatchlet/verification-key"
    variables = function(cloudformation)["Environment"]["Variables"]
    assert variables["DISPATCH_VERIFICATION_KEY"] == {"Ref": "VerificationKeyParameter"}
    # Empty by default: each URL is then checked against the host it was called on.
    assert cloudformation["Parameters"]["EndpointUrl"]["Default"] == ""
    assert variables["DISPATCH_ENDPOINT_URL"] == {"Ref": "EndpointUrl"}


def test_direct_invoker_permission_is_optional(cloudformation: dict[str, Any]) -> None:
    assert cloudformation["Parameters"]["DispatchInvokerPrincipal"]["Default"] == ""
    permission = cloudformation["Resources"]["DispatchInvokePermission"]
    assert permission["Condition"] == "HasDispatchInvoker"
    assert permission["Properties"]["Action"] == "lambda:InvokeFunction"
    assert permission["Properties"]["Principal"] == {"Ref": "DispatchInvokerPrincipal"}


def evaluate(value: Any, attributes: dict[tuple[str, str], str]) -> Any:
    """The value of an expression made of Fn::GetAtt, Fn::Split, Fn::Select, Fn::Join."""
    if not isinstance(value, dict):
        return [evaluate(v, attributes) for v in value] if isinstance(value, list) else value
    ((function_name, argument),) = value.items()
    argument = evaluate(argument, attributes)
    if function_name == "Fn::GetAtt":
        return attributes[tuple(argument)]
    if function_name == "Fn::Split":
        return argument[1].split(argument[0])
    if function_name == "Fn::Select":
        return argument[1][int(argument[0])]
    if function_name == "Fn::Join":
        return argument[0].join(argument[1])
    raise AssertionError(f"unexpected {function_name} in an output")


def test_outputs_name_the_three_endpoints(cloudformation: dict[str, Any]) -> None:
    outputs = cloudformation["Outputs"]
    assert set(outputs) == {"FunctionUrl", "HttpApiUrl", "FunctionArn"}
    (url_id,) = resources_of_type(cloudformation, "AWS::Lambda::Url")
    # Lambda's URL ends with "/"; the output is the base URL the RPC path is appended to.
    attributes = {(url_id, "FunctionUrl"): "https://abc123.lambda-url.us-east-1.on.aws/"}
    function_url = evaluate(outputs["FunctionUrl"]["Value"], attributes)
    assert function_url == "https://abc123.lambda-url.us-east-1.on.aws"
    (api_id,) = resources_of_type(cloudformation, "AWS::ApiGatewayV2::Api")
    http_api = outputs["HttpApiUrl"]["Value"]["Fn::Sub"]
    assert http_api.startswith(f"https://${{{api_id}}}.execute-api.${{AWS::Region}}.")
    assert outputs["FunctionArn"]["Value"] == {"Fn::GetAtt": [FUNCTION, "Arn"]}
    assert "direct" in outputs["FunctionArn"]["Description"]


# --- the build ---------------------------------------------------------------------------

SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
API_DOMAIN = "abc123.execute-api.us-east-1.amazonaws.com"

# Runs in a fresh interpreter with only the standard library and the package on its path,
# as Lambda's runtime would import the handler.
SERVE = """
import base64, importlib, json, sys
package, handler_name, events = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, package)
module_name, attribute = handler_name.rsplit(".", 1)
handler = getattr(importlib.import_module(module_name), attribute)
import dispatchlet
assert dispatchlet.__file__.startswith(package), dispatchlet.__file__
print(json.dumps({
    "direct": handler(events["direct"], None),
    "http_api": handler(events["http_api"], None),
}))
"""


def run_request(function_name: str, value: Any) -> function_pb2.RunRequest:
    request = function_pb2.RunRequest(function=function_name)
    request.input.CopyFrom(values.to_any(value))
    return request


def http_api_event(request: function_pb2.RunRequest) -> dict[str, Any]:
    """A signed Run request as the HTTP API of template.yaml hands it to the function."""
    signed = sign_request(
        Request(
            "POST",
            RUN_PATH,
            API_DOMAIN,
            [("Content-Type", PROTO)],
            request.SerializeToString(),
        ),
        SIGNING_KEY,
    )
    return {
        "version": "2.0",
        "routeKey": f"POST {RUN_PATH}",
        "rawPath": RUN_PATH,
        "rawQueryString": "",
        "headers": {"host": API_DOMAIN, **{k.lower(): v for k, v in signed.headers}},
        "requestContext": {
            "domainName": API_DOMAIN,
            "http": {"method": "POST", "path": RUN_PATH},
        },
        "body": base64.b64encode(signed.body).decode("ascii"),
        "isBase64Encoded": True,
    }


# The platforms built: this machine's own wheels (importable here), and the Lambda
# platform template.yaml deploys to (aarch64 binaries, checked by their ELF headers).
BUILDS = {"host": "host", "lambda": lambda_package.ARCHITECTURE}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What `sam build` runs, the Makefile's target in a copy of CodeUri, once per
    platform; the two builds run side by side to take less wall time."""
    make = shutil.which("make")
    assert make is not None, "make is needed for the SAM build"
    root = tmp_path_factory.mktemp("build")
    code_uri = root / "examples"
    shutil.copytree(ROOT / "examples", code_uri, ignore=shutil.ignore_patterns("__pycache__"))
    running = {}
    for name, architecture in BUILDS.items():
        artifacts = root / name
        settings = {
            "ARTIFACTS_DIR": str(artifacts),
            "PYTHON": sys.executable,
            "ARCHITECTURE": architecture,
            "HANDLER": lambda_package.HANDLER,
        }
        if architecture == "host":  # bytecode this interpreter uses
            settings["PYTHON_VERSION"] = HOST_VERSION
        command = [make, "--makefile", str(AWS_DIR / "Makefile"), f"build-{FUNCTION}"]
        command += [f"{k}={v}" for k, v in settings.items()]
        log = (root / f"{name}.log").open("w")
        process = subprocess.Popen(command, cwd=code_uri, stdout=log, stderr=subprocess.STDOUT)
        running[name] = (process, log, artifacts)
    statuses = {}
    for name, (process, log, _) in running.items():
        statuses[name] = process.wait(timeout=600)
        log.close()
    for name, status in statuses.items():
        output = (root / f"{name}.log").read_text()
        assert status == 0, f"{name} build failed:\n{output[-4000:]}"
    return {name: artifacts for name, (_, _, artifacts) in running.items()}


HOST_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def check_layout(artifacts: Path, app: Path = ROOT / "examples", version: str = "3.12") -> None:
    for path in app.glob("*.py"):
        assert (artifacts / path.name).read_text() == path.read_text(), path.name
    assert (artifacts / "dispatchlet" / "adapters" / "aws_lambda" / "__init__.py").is_file()
    # What Lambda never uses is left out: the local server, the scheduler's HTTP libraries.
    assert not list(artifacts.glob("waitress*"))
    assert not list(artifacts.glob("aiohttp*"))
    assert not list(artifacts.glob("httptools*"))
    assert (artifacts / "cryptography").is_dir()
    assert (artifacts / "google" / "protobuf").is_dir()
    # Nothing the build machine made for itself, nothing that differs between builds.
    assert not (artifacts / "bin").exists()
    assert not list(artifacts.glob("*.dist-info/direct_url.json"))
    # Bytecode for the runtime's Python only, for every module, the app's included.
    tag = f"cpython-{version.replace('.', '')}"
    compiled = list(artifacts.rglob("*.pyc"))
    if lambda_package.bytecode_compiler(version) is not None:
        assert {path.name.split(".")[-2] for path in compiled} == {tag}
        for path in app.glob("*.py"):
            assert (artifacts / "__pycache__" / f"{path.stem}.{tag}.pyc").is_file()
        assert (
            artifacts / "dispatchlet" / "core" / "__pycache__" / f"endpoint.{tag}.pyc"
        ).is_file()
    else:
        assert compiled == []
    for record in artifacts.glob("*.dist-info/RECORD"):
        assert "direct_url.json" not in record.read_text(), record


AARCH64 = 183  # ELF e_machine


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (183 for aarch64, 62 for x86_64)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


@pytest.mark.slow
def test_built_package_serves_direct_and_http_invocations(
    builds: dict[str, Path], tmp_path: Path
) -> None:
    """The build with this machine's own wheels (the Lambda platform's cannot be imported
    here): the handler imports from the package alone, as Lambda's runtime imports it,
    and serves a direct invocation and a signed HTTP API request."""
    artifacts = builds["host"]
    check_layout(artifacts, version=HOST_VERSION)

    events = {
        "direct": base64.b64encode(run_request("greet", "World").SerializeToString()).decode(),
        "http_api": http_api_event(run_request("add", {"a": 1, "b": 2})),
    }
    public_key = SIGNING_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DISPATCH_VERIFICATION_KEY": base64.b64encode(public_key).decode(),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            SERVE,
            str(artifacts),
            lambda_package.HANDLER,
            json.dumps(events),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)

    direct = function_pb2.RunResponse.FromString(base64.b64decode(answers["direct"]))
    assert direct.status == 1, direct
    assert values.from_any(direct.exit.result.output) == "Hello, World!"

    http = answers["http_api"]
    assert http["statusCode"] == 200, http
    response = function_pb2.RunResponse.FromString(base64.b64decode(http["body"]))
    assert values.from_any(response.exit.result.output) == 3


@pytest.mark.slow
def test_build_fetches_the_lambda_platform_wheels(builds: dict[str, Path]) -> None:
    """The build as `sam build` runs it: binary wheels for Lambda's Linux and CPU."""
    artifacts = builds["lambda"]
    check_layout(artifacts)
    binaries = list(artifacts.glob("cryptography/hazmat/bindings/_rust*.so"))
    assert binaries, "no cryptography binary in the package"
    assert {elf_machine(path) for path in binaries} == {AARCH64}
    assert list(artifacts.glob("google/_upb/_message*.so")), "protobuf without its C extension"


USER_APP = {
    "main.py": """
from dispatchlet import Endpoint
from dispatchlet.adapters.aws_lambda import lambda_handler

import helpers

endpoint = Endpoint()


@endpoint.function
def shout(text: str) -> str:
    return helpers.loud(text)


handler = lambda_handler(endpoint)
""",
    # six is the app's own requirement: it must come with the package.
    "helpers.py": (
        "import six\n\n\ndef loud(text):\n    return six.ensure_str(text).upper() + '!'\n"
    ),
    "requirements.txt": "six==1.16.0\n",
    ".venv/lib/junk.py": "raise SystemExit('a virtual environment was packaged')\n",
    # What the dev loop leaves in the app's folder: calls' inputs and outputs, its state.
    "dispatchlet.db": "SQLite format 3\0",
    "dispatchlet.db-wal": "",
    ".dispatchlet/signing-key.pem": "-----BEGIN PRIVATE KEY-----\n",
}


def write_app(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.slow
def test_users_app_outside_the_repository_is_packaged_and_runs(tmp_path: Path) -> None:
    app = write_app(tmp_path / "myproject", USER_APP)
    package = tmp_path / "function.zip"
    build = subprocess.run(
        [
            sys.executable,
            str(AWS_DIR / "lambda_package.py"),
            str(package),
            "--zip",
            f"--app-dir={app}",
            "--handler=main:handler",
            # For the Python running the build, wheels and bytecode alike.
            "--architecture=host",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert build.stdout.strip().endswith("Handler: main.handler")
    # Unpacked read-only, as Lambda's /var/task: nothing can be compiled into it.
    task = tmp_path / "task"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(task)
    check_layout(task, app, HOST_VERSION)
    assert not (task / ".venv").exists()
    assert not list(task.glob("dispatchlet.db*"))
    assert not (task / ".dispatchlet").exists()
    assert "left out: .dispatchlet/, .venv/, dispatchlet.db, dispatchlet.db-wal" in build.stdout
    assert (task / "six.py").is_file()
    for path in [task, *task.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        answers = serve_package(task, "main.handler", "shout", "hey", tmp_path)
    finally:
        for path in [task, *task.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    for answer in answers:
        assert values.from_any(answer.exit.result.output) == "HEY!"


def serve_package(
    package: Path, handler: str, function_name: str, value: Any, cwd: Path
) -> list[function_pb2.RunResponse]:
    """The RunResponses of one direct invocation and one signed HTTP API event of
    ``function_name(value)``, served by ``handler`` of ``package`` in a fresh process."""
    events = {
        "direct": base64.b64encode(run_request(function_name, value).SerializeToString()).decode(),
        "http_api": http_api_event(run_request(function_name, value)),
    }
    public_key = SIGNING_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DISPATCH_VERIFICATION_KEY": base64.b64encode(public_key).decode(),
    }
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SERVE, str(package), handler, json.dumps(events)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    http = answers["http_api"]
    assert http["statusCode"] == 200, http
    return [
        function_pb2.RunResponse.FromString(base64.b64decode(answers["direct"])),
        function_pb2.RunResponse.FromString(base64.b64decode(http["body"])),
    ]


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("missing:handler", "handler module 'missing' not found in"),
        ("main", "invalid handler 'main'"),
        ("main:bad-name", "invalid handler"),
    ],
)
def test_a_handler_not_in_the_app_is_named_before_anything_is_built(
    tmp_path: Path, handler: str, message: str
) -> None:
    app = write_app(tmp_path / "myproject", {"main.py": "handler = None\n"})
    result = subprocess.run(
        [
            sys.executable,
            str(AWS_DIR / "lambda_package.py"),
            str(tmp_path / "out"),
            f"--app-dir={app}",
            f"--handler={handler}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_host_packages_take_wheels_and_bytecode_for_the_same_python() -> None:
    """A host package built for another Python than pip's must not mix the two: pip is
    told the version the bytecode is compiled for."""
    args = lambda_package.pip_platform_args("host", "3.12")
    assert args[args.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in args
    assert "--platform" not in args  # this machine's own platform
    # Without --python-version, host means the Python running the build.
    assert lambda_package.default_python_version("host") == HOST_VERSION
    assert lambda_package.default_python_version("arm64") == lambda_package.PYTHON_VERSION


def test_zip_into_a_missing_folder_fails_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the package was built before its output was checked")

    monkeypatch.setattr(lambda_package, "build", no_build)
    missing = tmp_path / "missing" / "function.zip"
    status = lambda_package.main([str(missing), "--zip", f"--app-dir={ROOT / 'examples'}"])
    assert status == 1
    error = capsys.readouterr().err
    assert f"the folder {missing.parent} does not exist" in error
    assert not missing.parent.exists()


def test_zip_onto_a_folder_fails_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the package was built before its output was checked")

    monkeypatch.setattr(lambda_package, "build", no_build)
    status = lambda_package.main([str(tmp_path), "--zip", f"--app-dir={ROOT / 'examples'}"])
    assert status == 1
    assert "is a folder: --zip writes a file" in capsys.readouterr().err


def test_zip_is_reproducible(tmp_path: Path) -> None:
    """deploy.py uploads code only when its hash changed: the same files make the same zip."""
    folder = tmp_path / "package"
    (folder / "dispatchlet").mkdir(parents=True)
    (folder / "lambda_app.py").write_text("handler = None\n")
    (folder / "dispatchlet" / "__init__.py").write_text("")
    first = lambda_package.write_zip(folder, tmp_path / "first.zip").read_bytes()
    os.utime(folder / "lambda_app.py", (0, 0))
    (folder / "lambda_app.py").chmod(0o600)
    second = lambda_package.write_zip(folder, tmp_path / "second.zip").read_bytes()
    assert first == second
    # Lambda runs the code as another user than the files' owner.
    with zipfile.ZipFile(tmp_path / "second.zip") as archive:
        assert {info.external_attr >> 16 for info in archive.infolist()} == {0o100644}
