"""The deploy guides describe what exists: dispatchlet's own scheduler, not the hosted
Dispatch service (gone, with its console and its API), and install lines that work
before dispatchlet is on PyPI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = sorted(ROOT.glob("deploy/*/README.md"))
# What a user reads and runs while deploying: the guides, the template and the tools.
DEPLOY_FILES = [
    *GUIDES,
    ROOT / "template.yaml",
    ROOT / "samconfig.toml",
    *sorted(ROOT.glob("deploy/**/*.py")),
    *sorted(ROOT.glob("deploy/**/*.example")),
]

# Instructions for the hosted service. Case matters for the name: "Dispatch" the
# service, not DISPATCH_API_URL nor dispatchlet.
HOSTED = [
    re.compile(r"(?i)\b(?:api|console|www)?\.?dispatch\.run\b"),
    re.compile(r"\bDispatch(?:'s)? console\b"),
    re.compile(r"\b[Rr]egister\w*\b[^.]{0,80}\bwith Dispatch\b"),
    re.compile(r"\b(?:to|with|from) Dispatch\b"),
    re.compile(r"\bDispatch's\b"),
    re.compile(r"\bDispatch (?:uses|invokes|calls|signs)\b"),
]
# In the guides, no console of any kind to take keys from: keys come from keygen.
CONSOLE = re.compile(r"(?i)\bconsole\b")


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def stale_lines(label: str, text: str, patterns: list[re.Pattern[str]]) -> list[str]:
    return [
        f"{label}:{number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), 1)
        if any(pattern.search(line) for pattern in patterns)
    ]


def test_the_stale_patterns_catch_the_old_instructions() -> None:
    """The check's own control: lines from the guides as they were."""
    old = [
        '--value "$(cat verification-key.pem)"  # or the base64 key from the Dispatch console',
        "## 3. Give the endpoint to Dispatch",
        "Register this endpoint URL with Dispatch: https://example.com",
        "the function ARN: Dispatch calls `Invoke` directly",
        "allow Dispatch's account or role",
        "export DISPATCH_API_URL=https://api.dispatch.run",
        "take the signing key from https://console.dispatch.run",
    ]
    for line in old:
        assert stale_lines("old", line, HOSTED), line
    fine = "DISPATCH_API_URL=https://scheduler.example.com: your dispatchlet scheduler"
    assert not stale_lines("new", fine, HOSTED)


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_deploy_files_send_no_one_to_the_hosted_service(path: Path) -> None:
    label = str(path.relative_to(ROOT))
    patterns = [*HOSTED, CONSOLE] if path in GUIDES else HOSTED
    assert stale_lines(label, path.read_text(), patterns) == []


@pytest.mark.parametrize("section", ["Install", "Deploying"])
def test_the_readmes_deploy_sections_send_no_one_to_the_hosted_service(section: str) -> None:
    text = readme_section(section)
    assert stale_lines(f"README.md ({section})", text, [*HOSTED, CONSOLE]) == []


def test_the_guides_point_to_the_scheduler_and_its_keys() -> None:
    for path in [p for p in GUIDES if p.parent.name != "scheduler"]:
        text = path.read_text()
        assert "dispatchlet keygen" in text, path
        assert "scheduler/README.md" in text, path
    scheduler = (ROOT / "deploy" / "scheduler" / "README.md").read_text()
    for setting in (
        "DISPATCH_SIGNING_KEY",
        "DISPATCH_VERIFICATION_KEY",
        "DISPATCH_API_URL",
        "DISPATCH_API_KEY",
    ):
        assert setting in scheduler, setting


def index_installs(text: str) -> list[str]:
    """The `pip install` commands of ``text`` that would fetch dispatchlet from an index:
    a requirement named dispatchlet with no direct reference (``@ file://...``, a path).
    A line that speaks of PyPI says how it will read once published."""
    found = []
    for line in text.splitlines():
        for command in re.findall(r"pip install ([^`#\n]*)", line):
            if "PyPI" in line or " @ " in command:
                continue
            try:
                words = shlex.split(command)
            except ValueError:
                words = command.split()
            for word in words:
                if re.fullmatch(r"dispatchlet(\[[\w,-]+\])?([<>=!~].*)?", word):
                    found.append(line.strip())
    return found


def test_the_install_check_catches_an_index_install() -> None:
    assert index_installs("pip install 'dispatchlet[gunicorn]'")
    assert index_installs("sudo /opt/dispatchlet/bin/pip install 'dispatchlet[postgres]'")
    assert index_installs("pip install dispatchlet          # waitress comes with it")
    assert not index_installs("pip install -e '.[gunicorn]'")
    assert not index_installs("pip install 'dispatchlet[gunicorn] @ file:///tmp/x.whl'")
    assert not index_installs("Once on PyPI: `pip install 'dispatchlet[gunicorn]'`")


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *GUIDES], ids=lambda path: str(path.relative_to(ROOT))
)
def test_install_lines_work_before_dispatchlet_is_on_pypi(path: Path) -> None:
    assert index_installs(path.read_text()) == []
