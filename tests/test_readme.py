"""The README's Python snippets run, and print what the README says they print.

A snippet is run when the line before its ```python fence is a marker:

    <!-- runnable -->                              run alone, in a fresh process
    <!-- runnable: name=onboarding -->             ... and others may name it
    <!-- runnable: after=onboarding -->            run after that snippet, in one script
    <!-- runnable: after=app.py scheduler=dev -->  ... against `dispatchlet dev app.py`

A snippet whose first line is a ``# file.py`` comment is named after that file and
written to it, beside the script, so that ``dispatchlet dev`` can serve it. Where a
``print(...)`` line ends with a comment, the comment is what it prints: those lines must
come out, in order. Nothing is stubbed: the scheduler and the endpoint are real
processes on free loopback ports, with the exports ``dispatchlet dev`` prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_scheduler_processes import Process, environment

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_TIMEOUT = 60.0

_MARKER = re.compile(r"<!--\s*runnable(?::\s*(?P<options>[^>]*?))?\s*-->")
_FILE_COMMENT = re.compile(r"#\s*([\w.-]+\.py)\s*$")
_PRINTED = re.compile(r"^\s*print\(.*\)\s*#\s?(?P<shown>.*?)\s*$")


@dataclass(frozen=True)
class Snippet:
    line: int
    """Where its code starts in README.md (1-based)."""
    code: str
    name: str | None
    after: str | None
    scheduler: str | None

    @property
    def file(self) -> str | None:
        """The file it is written to: its ``# file.py`` first line, if it has one."""
        match = _FILE_COMMENT.match(self.code.splitlines()[0]) if self.code else None
        return match.group(1) if match else None


def runnable_snippets(text: str) -> list[Snippet]:
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.strip() != "```python" or index == 0:
            continue
        marker = _MARKER.fullmatch(lines[index - 1].strip())
        if marker is None:
            continue
        options = dict(
            option.split("=", 1) for option in (marker.group("options") or "").split() if option
        )
        unknown = set(options) - {"name", "after", "scheduler"}
        assert not unknown, f"README.md:{index}: unknown marker options {unknown}"
        end = lines.index("```", index + 1)
        code = "\n".join(lines[index + 1 : end]) + "\n"
        snippet = Snippet(
            index + 2, code, options.get("name"), options.get("after"), options.get("scheduler")
        )
        found.append(snippet)
    return found


SNIPPETS = runnable_snippets(README.read_text())


def named(name: str) -> Snippet:
    for snippet in SNIPPETS:
        if name in (snippet.name, snippet.file):
            return snippet
    raise AssertionError(f"no runnable README snippet is named {name!r}")


def chain(snippet: Snippet) -> list[Snippet]:
    """The snippets to run, in order: those it comes after, then itself."""
    order = [snippet]
    while order[0].after is not None:
        before = named(order[0].after)
        assert before not in order, f"README.md:{snippet.line}: snippets come after each other"
        order.insert(0, before)
    return order


def printed(code: str) -> list[str]:
    """What the README says the code prints: the comments of its print lines."""
    return [m.group("shown") for line in code.splitlines() if (m := _PRINTED.match(line))]


def in_order(expected: list[str], lines: list[str]) -> bool:
    remaining = iter(lines)
    return all(any(line == wanted for line in remaining) for wanted in expected)


@contextmanager
def dispatchlet_dev(app: str, folder: Path) -> Iterator[dict[str, str]]:
    """``dispatchlet dev APP`` on free loopback ports: the exports it prints."""
    process = Process(
        [
            *(sys.executable, "-m", "dispatchlet", "dev", app),
            *("--port", "0", "--scheduler-port", "0", "--db", str(folder / "dev.db")),
        ],
        environment(),
        folder,
    )
    try:
        exports: dict[str, str] = {}
        while len(exports) < 3:
            match = process.wait_for(r"export (DISPATCH_\w+)=(\S+)")
            exports[match.group(1)] = match.group(2).strip("'")
        yield exports
    finally:
        process.stop()


def run(script: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = folder / "snippet.py"
    path.write_text(script)
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_the_readme_marks_its_snippets() -> None:
    # The markers are found: the quick start's app, and a snippet run with a scheduler.
    assert named("app.py").file == "app.py"
    assert [s for s in SNIPPETS if s.scheduler == "dev"]
    assert all(s.scheduler in (None, "dev") for s in SNIPPETS), "scheduler=dev is the one kind"


@pytest.mark.parametrize(
    "snippet",
    [
        pytest.param(s, id=f"README.md:{s.line}", marks=[pytest.mark.slow] if s.scheduler else [])
        for s in SNIPPETS
    ],
)
def test_readme_snippet_runs_and_prints_what_the_readme_says(
    snippet: Snippet, tmp_path: Path
) -> None:
    parts = chain(snippet)
    for part in parts:
        if part.file is not None:
            (tmp_path / part.file).write_text(part.code)
    script = "\n".join(part.code for part in parts)
    if snippet.scheduler == "dev":
        app = next((p.file for p in parts[:-1] if p.file is not None), None)
        assert app is not None, f"README.md:{snippet.line}: scheduler=dev needs an app to serve"
        with dispatchlet_dev(app, tmp_path) as exports:
            result = run(script, tmp_path, environment(**exports))
    else:
        result = run(script, tmp_path, environment())
    where = f"README.md:{snippet.line}"
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    expected = printed(script)
    lines = result.stdout.splitlines()
    assert in_order(expected, lines), f"{where} prints {lines}, the README says {expected}"
