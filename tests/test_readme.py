"""The README's code blocks run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(section: str) -> str:
    text = README.read_text()
    start = text.index(f"## {section}")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"no python block under '## {section}'"
    return match.group(1)


def test_quickstart_runs(capsys):
    exec(compile(_python_block("Quickstart"), "README-quickstart", "exec"), {})
    assert "mu=" in capsys.readouterr().out


def test_readme_shows_each_executed_snippet_verbatim():
    """The snippet files (Python, YAML, shell) are what the binding tests execute; the README must
    show them unchanged."""
    text = README.read_text()
    snippets = sorted((README.parent / "docs" / "snippets").glob("*.*"))
    assert snippets
    for path in snippets:
        assert path.read_text().rstrip("\n") in text, f"{path.name} differs from its README copy"
