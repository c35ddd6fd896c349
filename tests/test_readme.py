"""The README's code blocks run as written."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from gaccore import Config

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


# The snippets that docs/bindings.md shows instead of the README (the README links to them).
IN_BINDINGS_DOC = {"verl.py", "swift_rewards.py"}


def test_readme_shows_each_executed_snippet_verbatim():
    """The snippet files (Python, YAML, shell) are what the binding tests execute; the README (or,
    for the few it links to, docs/bindings.md) must show them unchanged."""
    docs = {"README.md": README.read_text(), "bindings.md": (README.parent / "docs" / "bindings.md").read_text()}
    snippets = sorted((README.parent / "docs" / "snippets").glob("*.*"))
    assert snippets
    for path in snippets:
        where = "bindings.md" if path.name in IN_BINDINGS_DOC else "README.md"
        assert path.read_text().rstrip("\n") in docs[where], f"{path.name} differs from its copy in {where}"


def test_readme_settings_table_matches_config():
    """The table of settings is made from Config's fields: every field's name, default and help
    text (its metadata) appear as one row, in field order, so the table cannot drift from the code."""
    text = README.read_text()
    rows = [f"| `{f.name}` | `{f.default!r}` | {f.metadata['help']} |" for f in dataclasses.fields(Config)]
    positions = []
    for row in rows:
        assert row in text, f"README lacks the settings row {row!r}"
        positions.append(text.index(row))
    assert positions == sorted(positions), "the README's settings rows are not in Config's field order"
    documented = re.findall(r"^\| `(\w+)` \| `", text, re.M)
    assert documented == [f.name for f in dataclasses.fields(Config)], "the table has rows for non-fields"
