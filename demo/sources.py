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
# bindings/ install as gaccore.demo, gaccore.kernels and gaccore.bindings;
# in a wheel all of them sit inside gaccore/); tests point it at a copy.
SOURCE_DIRS: dict[str, Path] = {
    package: _package_dir(package) for package in ("gaccore", "gaccore.demo", "gaccore.kernels", "gaccore.bindings")
}
# The demo's files that plan, key, store and report runs but never touch a
# run's numbers (the settings they pass on are in the key): editing them
# retrains nothing. Every other file of the demo keys every run.
DEMO_REPORTING_FILES = (
    "__main__.py",
    "runner.py",
    "sources.py",
    "report.py",
    "summaries.py",
    "provenance.py",
    "markdown.py",
    "figures.py",
    "verdict.py",
    "study.py",
    "study_report.py",
    "study_markdown.py",
    "study_figures.py",
)
# The torch SFT loss and mix(), which every method trains with.
SFT_LOSS_SOURCE = ("gaccore.bindings", "losses.py")
# What a baseline's numbers can depend on beyond the demo's own files: the
# rules with what they import (gaccore.stats, whose k3 is also the KL every
# run logs and feeds to its rule), gaccore.rows (kept_demos, the filter of
# the filtered baselines), and the SFT loss. Left out on purpose:
# gaccore.validation (checks, no arithmetic).
BASELINE_SOURCES = (
    ("gaccore", "baselines.py"),
    ("gaccore", "stats.py"),
    ("gaccore", "rows.py"),
    ("gaccore", "schedules.py"),
    ("gaccore", "persistence.py"),
    ("gaccore", "_array.py"),
    SFT_LOSS_SOURCE,
)
# The torch side's files that a demo run never executes, as paths inside
# kernels/ (a folder stands for every file in it). The demo trains on CPU
# tensors: its statistics come from the numba pass or, without numba, the
# torch twin, never from a Triton kernel (the row kernel, the close-step
# kernel), and it has no process group (the distributed gather) and no
# compiled or replayed step (the CUDA graphs). A GAC run's key covers every
# other file of the torch side, so editing one of these retrains nothing.
# When kernels/ changes, change this list with it: a test checks that every
# entry exists.
TORCH_SIDE_NOT_RUN_ON_CPU = (
    "row_stats/fused.py",
    "row_stats/launch.py",
    "triton_numerics.py",
    "close_step",
    "distributed.py",
)


def _listed(path: str, entries: tuple[str, ...]) -> bool:
    """Whether ``path`` (posix, inside a package) is one of ``entries`` or inside a folder of them."""
    return any(path == entry or path.startswith(entry.rstrip("/") + "/") for entry in entries)


def _files(package: str) -> list[str]:
    """Every Python file of ``package``, as a posix path inside it. In a
    wheel the subpackages sit inside gaccore/: each file counts for its own
    package only."""
    root = SOURCE_DIRS[package]
    nested = [folder for other, folder in SOURCE_DIRS.items() if other != package and folder.is_relative_to(root)]
    inside = [p for p in root.rglob("*.py") if not any(p.is_relative_to(folder) for folder in nested)]
    return sorted(p.relative_to(root).as_posix() for p in inside)


def method_sources(method: str) -> dict[str, Path]:
    """The source files whose edits can change ``method``'s numbers, named
    independently of where the packages live (``gaccore/demo/train.py``):
    for every method the demo's own files but ``DEMO_REPORTING_FILES``; for
    a baseline, with them ``BASELINE_SOURCES`` (the baseline rules with what
    they import, and the torch SFT loss); for GAC, with them every file of
    the core, every file of the torch side but
    ``TORCH_SIDE_NOT_RUN_ON_CPU``, and the SFT loss."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    files = [("gaccore.demo", name) for name in _files("gaccore.demo") if name not in DEMO_REPORTING_FILES]
    if is_gac_method(method):
        files += [("gaccore", name) for name in _files("gaccore")]
        files += [
            ("gaccore.kernels", name)
            for name in _files("gaccore.kernels")
            if not _listed(name, TORCH_SIDE_NOT_RUN_ON_CPU)
        ]
        files.append(SFT_LOSS_SOURCE)
    else:
        files += BASELINE_SOURCES
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
