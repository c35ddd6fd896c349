"""The tooling around the tests: ./dev fails when an install fails, and in CI
a test that skips because a library of the dev environment is missing fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for the venv's python: pip fails (or warns) as told, everything else succeeds.
FAKE_PYTHON = """#!/bin/sh
case "$*" in
  *"pip install"*" -e "*) echo "WARNING: Location of something"; {pip_install_e} ;;
esac
exit 0
"""


def _run_dev(tmp_path: Path, pip_install_e: str) -> subprocess.CompletedProcess[str]:
    """./dev test in a copy of the repository's dev script, pyproject.toml and constraints,
    with a fake python in .venv, .venv-trinity and .venv-swift (no stamp: the install step
    runs; ./dev test without a test path goes on to test-trinity and test-swift)."""
    shutil.copy(ROOT / "dev", tmp_path / "dev")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "constraints", tmp_path / "constraints")  # ./dev hashes and applies them
    for venv in (".venv", ".venv-trinity", ".venv-swift"):
        python = tmp_path / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(FAKE_PYTHON.format(pip_install_e=pip_install_e))
        python.chmod(0o755)
    return subprocess.run(["bash", str(tmp_path / "dev"), "test"], capture_output=True, text=True, timeout=60)


def test_dev_fails_when_pip_install_fails(tmp_path: Path) -> None:
    result = _run_dev(tmp_path, 'echo "ERROR: No matching distribution found for verl" >&2; exit 1')
    assert result.returncode != 0
    assert "No matching distribution found for verl" in result.stderr and "failed" in result.stderr
    assert not (tmp_path / ".venv" / ".gaccore-installed").exists()


def test_dev_filters_pip_location_warnings_and_succeeds(tmp_path: Path) -> None:
    """grep -v finding nothing left to print is not a failure of the install."""
    result = _run_dev(tmp_path, "exit 0")
    assert result.returncode == 0, result.stderr
    assert "WARNING: Location" not in result.stderr
    assert (tmp_path / ".venv" / ".gaccore-installed").exists()
    assert (tmp_path / ".venv-trinity" / ".gaccore-installed").exists()
    assert (tmp_path / ".venv-swift" / ".gaccore-installed").exists()


SKIPPING_TESTS = """
import pytest

def test_needs_a_dev_library_at_run_time():
    pytest.importorskip("trl")

def test_needs_a_gpu():
    pytest.skip("needs a CUDA GPU")

def test_needs_an_optional_library():
    pytest.importorskip("gaccore_test_optional_library")

def test_runs():
    pass
"""


def _run_pytest_with_hidden_libraries(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    """tests/conftest.py over two small test modules, with trl and verl made
    unimportable; CI set or not."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for name in ("trl", "verl"):
        message = f"No module named {name!r}"
        (hidden / f"{name}.py").write_text(f"raise ModuleNotFoundError({message!r}, name={name!r})\n")
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "test_module_level.py").write_text('import pytest\n\npytest.importorskip("verl")\n')
    (suite / "test_in_tests.py").write_text(SKIPPING_TESTS)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    env["PYTHONPATH"] = str(hidden)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--continue-on-collection-errors"],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_in_ci_a_missing_dev_library_fails_the_tests_that_need_it(tmp_path: Path) -> None:
    result = _run_pytest_with_hidden_libraries(tmp_path, ci=True)
    out = result.stdout
    assert result.returncode != 0, out
    assert out.count("CI: ./dev installs this library") >= 2 and "SyntaxError" not in out
    assert "ERROR test_module_level.py" in out  # module-level importorskip("verl")
    assert "FAILED test_in_tests.py::test_needs_a_dev_library_at_run_time" in out  # importorskip("trl") in a test
    assert "SKIPPED [1] test_in_tests.py:8: needs a CUDA GPU" in out  # GPU skips stay skips
    assert "gaccore_test_optional_library" in out and "1 failed, 1 passed, 2 skipped, 1 error" in out


def test_outside_ci_a_missing_library_skips(tmp_path: Path) -> None:
    result = _run_pytest_with_hidden_libraries(tmp_path, ci=False)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 4 skipped" in result.stdout
