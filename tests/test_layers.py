"""The import layers of pyproject.toml hold, and a breach of them fails the lint.

import-linter reads the package as it is installed (demo/, kernels/ and
bindings/ inside gaccore/), so each test assembles that layout in a scratch
folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="needs the dev extra's import-linter")


def assemble(folder: Path) -> Path:
    package = folder / "gaccore"
    shutil.copytree(ROOT / "gaccore", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "demo", package / "demo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "kernels", package / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "bindings", package / "bindings", ignore=shutil.ignore_patterns("__pycache__"))
    return package


def lint_imports(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=folder,
        env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def add_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n{statement}  # noqa\n")


def test_the_layers_hold(tmp_path: Path) -> None:
    assemble(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, statement, broken",
    [
        ("rows.py", "import gaccore.kernels.tensors", "demo > bindings > kernels"),
        ("controller.py", "from gaccore.bindings import common", "demo > bindings > kernels"),
        ("kernels/row_stats/twin.py", "import gaccore.bindings.losses", "demo > bindings > kernels"),
        ("bindings/losses.py", "from gaccore.demo import task", "demo > bindings > kernels"),
        ("kernels/row_stats/twin.py", "from gaccore.kernels import runners", "backend > runners > close step"),
        ("kernels/tensors.py", "from gaccore.kernels.row_stats import twin", "backend > runners > close step"),
        ("stats.py", "import torch", "imports neither torch nor triton"),
    ],
)
def test_an_import_up_a_layer_fails(tmp_path: Path, module: str, statement: str, broken: str) -> None:
    add_import(assemble(tmp_path) / module, statement)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout
