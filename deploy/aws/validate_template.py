"""Check an AWS SAM template offline: ``python deploy/aws/validate_template.py [template.yaml]``.

What ``sam validate --lint`` does, and more, with no AWS account and no network:

1. the SAM translator (aws-sam-translator) turns the template into CloudFormation,
   with local CodeUri folders standing in as S3 URIs, as ``sam validate`` does;
2. cfn-lint checks the SAM template and also the CloudFormation it became: the
   resource schemas apply only there (runtimes, architectures, unknown Refs inside
   SAM properties), which linting the SAM template alone misses;
3. what ``sam build`` needs locally: each local CodeUri exists, and a Makefile build
   has its ``build-<LogicalId>`` target.

Exit status 0 when the template is sound, 1 with the problems on stderr otherwise, 2
when the checkers are not installed.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import lambda_package

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
DEFAULT_REGION = "us-east-1"
# Stands in for a local CodeUri, as in `sam validate`: the translator wants S3 URIs.
_PLACEHOLDER_URI = "s3://bucket/value"
_FUNCTION = "AWS::Serverless::Function"


class TemplateError(Exception):
    """The template cannot be read or translated."""


@dataclass
class Report:
    """The problems found, and the CloudFormation the template translates to."""

    problems: list[str] = field(default_factory=list)
    cloudformation: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(path: Path, *, region: str = DEFAULT_REGION) -> Report:
    """Check the SAM template at ``path``; see the module's description."""
    report = Report()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        report.problems.append(f"cannot read {path}: {exc}")
        return report
    template = _decode(text, path, report)
    if template is None:
        return report
    report.problems.extend(_lint(text, region, label=str(path)))
    try:
        report.cloudformation = translate(template, region=region)
    except TemplateError as exc:
        report.problems.append(str(exc))
    else:
        report.problems.extend(
            _lint(json.dumps(report.cloudformation), region, label="translated template")
        )
    report.problems.extend(_check_local_build(template, path.parent))
    return report


def translate(template: dict[str, Any], *, region: str = DEFAULT_REGION) -> dict[str, Any]:
    """The CloudFormation template a SAM template becomes, translated offline."""
    # The translator is untyped; imported here so that reading this module stays cheap.
    import boto3
    from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    document = _with_placeholder_uris(copy.deepcopy(template))
    # An explicit session fixes the region and partition; its fake credentials are
    # never used, since nothing below calls AWS.
    session = boto3.session.Session(
        region_name=region,
        aws_access_key_id="offline",
        aws_secret_access_key="offline",  # noqa: S106 (a placeholder, never sent)
    )
    # Metrics left unpublished are reported on stderr: publish them to nowhere.
    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
    translator = Translator(None, Parser(), plugins=[], boto_session=session, metrics=metrics)
    try:
        result: dict[str, Any] = translator.translate(
            document, parameter_values={}, get_managed_policy_map=_no_managed_policies
        )
    except InvalidDocumentException as exc:
        causes = "; ".join(cause.message for cause in exc.causes)
        raise TemplateError(f"SAM translator: {causes}") from None
    except TemplateError:
        raise
    except Exception as exc:  # the translator's other failures are bugs in the template too
        raise TemplateError(f"SAM translator: {type(exc).__name__}: {exc}") from None
    finally:
        metrics.publish()
    return result


def _no_managed_policies() -> dict[str, str]:
    # Resolving managed policy names would call IAM: the check stays offline.
    raise TemplateError(
        "SAM translator: managed policy names need IAM to resolve; give policy ARNs"
    )


def _decode(text: str, path: Path, report: Report) -> dict[str, Any] | None:
    from cfnlint.decode import decode_str

    template, matches = decode_str(text)
    if matches:
        report.problems.extend(_describe(match, str(path)) for match in matches)
        return None
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        report.problems.append(f"{path}: not a CloudFormation template (no Resources)")
        return None
    # Plain dicts and strings: the linter's decoded nodes carry line numbers the
    # translator does not expect.
    plain: dict[str, Any] = json.loads(json.dumps(template))
    return plain


@cache
def _rules() -> Any:
    # Loading cfn-lint's rules takes most of a lint's time: once per process.
    from cfnlint.core import get_rules

    return get_rules([], [], [])


def _lint(text: str, region: str, *, label: str) -> list[str]:
    from cfnlint.api import lint

    # Informational matches are advice, not faults.
    return [
        _describe(match, label)
        for match in lint(text, rules=_rules(), regions=[region])
        if not match.rule.id.startswith("I")
    ]


def _describe(match: Any, label: str) -> str:
    where = f"{label}:{match.linenumber}" if label != "translated template" else label
    path = getattr(match, "path", None)
    at = f" at {'/'.join(map(str, path))}" if path and label == "translated template" else ""
    return f"{where}: {match.rule.id} {match.message}{at}"


def _functions(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in template.get("Resources", {}).items():
        if isinstance(resource, dict) and resource.get("Type") == _FUNCTION:
            yield logical_id, resource


def _local_code_uri(properties: dict[str, Any]) -> str | None:
    uri = properties.get("CodeUri")
    if isinstance(uri, str) and not uri.startswith("s3://"):
        return uri
    return None


def _with_placeholder_uris(template: dict[str, Any]) -> dict[str, Any]:
    for _, resource in _functions(template):
        properties = resource.get("Properties")
        if isinstance(properties, dict) and _local_code_uri(properties) is not None:
            properties["CodeUri"] = _PLACEHOLDER_URI
    return template


def _check_local_build(template: dict[str, Any], base: Path) -> list[str]:
    problems = []
    for logical_id, resource in _functions(template):
        properties = resource.get("Properties")
        if not isinstance(properties, dict):
            continue
        uri = _local_code_uri(properties)
        if uri is not None and not (base / uri).is_dir():
            problems.append(f"{logical_id}: CodeUri {uri!r} is not a folder beside the template")
        elif uri is not None and isinstance(properties.get("Handler"), str):
            try:
                lambda_package.check_handler(base / uri, properties["Handler"])
            except lambda_package.PackageError as exc:
                problems.append(f"{logical_id}: Handler: {exc}")
        metadata = resource.get("Metadata")
        if not isinstance(metadata, dict) or metadata.get("BuildMethod") != "makefile":
            continue
        folder = metadata.get("ContextPath", uri)
        makefile = base / str(folder) / "Makefile" if folder is not None else None
        if makefile is None or not makefile.is_file():
            problems.append(f"{logical_id}: BuildMethod makefile, but no Makefile at {makefile}")
            continue
        target = f"build-{logical_id}"
        pattern = re.compile(rf"^{re.escape(target)}\s*:", re.MULTILINE)
        if not pattern.search(makefile.read_text(encoding="utf-8")):
            problems.append(f"{logical_id}: {makefile} has no {target!r} target")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template", nargs="?", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--region", default=DEFAULT_REGION)
    args = parser.parse_args(argv)
    try:
        report = validate(args.template, region=args.region)
    except ImportError as exc:
        print(f"{exc}: pip install aws-sam-translator cfn-lint", file=sys.stderr)
        return 2
    if report.problems:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{args.template}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
