"""Which source files key a run's record, and their digest.

A run's record is keyed (``runner.run_identity``) by a digest of the code
of every file its numbers can depend on (``method_sources``): the code
(``code_of``), not the text, so an edit of a docstring or a comment, or a
reformatting, retrains nothing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path

from .methods import METHODS, is_gac_method


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"cannot locate the package {package}")
    return Path(next(iter(spec.submodule_search_locations)))


# Where the code that decides a run's numbers lives (demo/, kernels/ and
# bindings/ install as gaccore.demo, gaccore.kernels and gaccore.bindings);
# tests point it at a copy.
SOURCE_DIRS: dict[str, Path] = {
    package: _package_dir(package) for package in ("gaccore", "gaccore.demo", "gaccore.kernels", "gaccore.bindings")
}
# The torch SFT loss and mix(), which every method trains with.
SFT_LOSS_SOURCE = ("gaccore.bindings", "losses.py")
# Demo files that plan, store and report runs but never touch one's numbers
# (the settings they pass on are in the key): editing them retrains nothing.
DEMO_REPORTING_SOURCES = [
    ("gaccore.demo", name)
    for name in (
        "__main__.py",
        "runner.py",
        "sources.py",
        "report.py",
        "summaries.py",
        "provenance.py",
        "markdown.py",
        "figures.py",
        "verdict.py",
    )
]
# What a baseline's numbers can depend on beyond the demo itself: the rules
# with what they import, and gaccore.stats, whose k3 is the KL every run logs
# and feeds to its rule. Left out on purpose: gaccore.validation (checks, no
# arithmetic).
BASELINE_SOURCES = [
    ("gaccore", "baselines.py"),
    ("gaccore", "stats.py"),
    ("gaccore", "schedules.py"),
    ("gaccore", "persistence.py"),
    ("gaccore", "_array.py"),
    SFT_LOSS_SOURCE,
]


# The torch side's modules a demo run never executes: it trains on CPU
# tensors, where statistics come from the numba pass or, without numba, the
# twin (never the Triton kernel), with no process group and no compiled step.
# Editing them retrains nothing.
KERNELS_NOT_RUN = ("fused.py", "distributed.py", "graphs.py")


def method_sources(method: str) -> dict[str, Path]:
    """The source files whose edits can change ``method``'s numbers, named
    independently of where the packages live: for a baseline, the demo's
    task, model and loop, the baseline rules with what they import, and the
    torch SFT loss; for GAC, the demo's files, every file of the core and
    of the torch side but ``KERNELS_NOT_RUN``, and the SFT loss; never
    ``DEMO_REPORTING_SOURCES``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    core, demo, kernels = SOURCE_DIRS["gaccore"], SOURCE_DIRS["gaccore.demo"], SOURCE_DIRS["gaccore.kernels"]
    files = [("gaccore.demo", p.relative_to(demo).as_posix()) for p in demo.glob("*.py")]
    if is_gac_method(method):
        # In a wheel the subpackages sit inside gaccore/: name each file once, by its package.
        subpackages = [SOURCE_DIRS[package] for package in SOURCE_DIRS if package != "gaccore"]
        core_files = [p for p in core.rglob("*.py") if not any(p.is_relative_to(sub) for sub in subpackages)]
        files += [("gaccore", p.relative_to(core).as_posix()) for p in core_files]
        files += [
            ("gaccore.kernels", p.relative_to(kernels).as_posix())
            for p in kernels.rglob("*.py")
            if p.name not in KERNELS_NOT_RUN
        ]
        files.append(SFT_LOSS_SOURCE)
    else:
        files += BASELINE_SOURCES
    files = [(package, name) for package, name in files if (package, name) not in DEMO_REPORTING_SOURCES]
    return {f"{package.replace('.', '/')}/{name}": SOURCE_DIRS[package] / name for package, name in sorted(files)}


def code_of(source: str) -> str:
    """A module's code without what cannot change a number: its syntax tree
    with every docstring dropped (comments are not in the tree), dumped
    without line numbers. An edit of a docstring or a comment, or a
    reformatting, leaves it unchanged."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def sources_digest(method: str) -> str:
    """SHA-256 over the names and the code (``code_of``) of ``method``'s source files."""
    digest = hashlib.sha256()
    for name, path in method_sources(method).items():
        digest.update(name.encode() + b"\0" + code_of(path.read_text()).encode() + b"\0")
    return digest.hexdigest()
