"""Test session setup.

Without a GPU, Triton kernels can only run in Triton's interpreter, which
must be chosen before triton is first imported (triton reads the variable
at import), so it is set here, before any test module loads. It changes
nothing but how @triton.jit functions execute. The GPU is detected by its
device node rather than torch.cuda so that conftest imports no torch (core
tests check that `import gaccore` does not).

In CI (``CI`` set, as ``.ci/run`` does) hypothesis runs a fixed set of
examples, and a test skipped because a library of the dev environment is
missing fails instead: ``./dev`` installs every one of them, so a missing one
is a broken install, not an optional feature. Skips for a missing GPU stay
skips.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import settings

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")

# CI runs a fixed set of examples (reproducible verdicts); local runs explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "default"))

# What the extras that ./dev installs in .venv (dev, torch, cpu, demo, trl, verl) provide; trinity
# lives in .venv-trinity, so its tests skip in .venv.
DEV_LIBRARIES = frozenset(
    {
        "torch",
        "triton",
        "numba",
        "matplotlib",
        "tqdm",
        "trl",
        "transformers",
        "accelerate",
        "datasets",
        "verl",
        "omegaconf",
        "transfer_queue",
    }
)
# pytest.importorskip's wording; tests that check with find_spec skip with the same words.
_COULD_NOT_IMPORT = re.compile(r"could not import '([\w.]+)'")


def _fail_missing_dev_library(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (IN_CI and report.skipped):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    match = _COULD_NOT_IMPORT.search(reason)
    if match and match.group(1).partition(".")[0] in DEV_LIBRARIES:
        report.outcome = "failed"
        report.longrepr = f"{reason}\nCI: ./dev installs this library, so its tests must run, not skip"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    _fail_missing_dev_library(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report = yield
    _fail_missing_dev_library(report)
    return report
