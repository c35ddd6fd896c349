"""Training every (task, method, seed) of a suite, in this process or in
worker processes, keeping one record per run, and writing the report.

Each finished run is written at once to ``OUT/runs/`` as JSON, under a key
of everything its numbers depend on: the task, the method, the seed, the
settings, the torch and numpy versions (and for GAC methods numba's, or
its absence: it decides which CPU path computes the statistics), and a
digest of the source files the method's code runs through
(``sources.method_sources``). With
``reuse=True`` a run whose record exists under the same key is loaded
instead of trained, so an interrupted suite resumes where it stopped and a
new method extends a suite without retraining the others; an edit of the
controller retrains the GAC methods only, and one of the report nothing.

Kept out of ``__main__`` so that worker processes can import the function
they run (``python -m gaccore.demo`` names its module ``__main__``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .methods import METHODS, is_gac_method
from .report import build_report, write_outputs
from .settings import RunResult, RunSettings
from .sources import sources_digest
from .task import SUITE
from .train import train_one

# 2: keyed by the code of the sources (code_of), not their text.
# 3: per-step series as means over SERIES_EVERY steps; the CPU's instruction set in the key.
RECORD_SCHEMA = "gaccore.demo.run/3"
# Workers report progress every this many steps (one message per step would cost more than it shows).
PROGRESS_EVERY = 10

RunPlan = tuple[str, str, int]  # (task, method, seed)


def numba_version() -> str | None:
    """The installed numba's version, ``None`` without numba."""
    try:
        return importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        return None


def numba_target() -> str | None:
    """The CPU numba compiles the statistics pass for (``NUMBA_CPU_NAME`` or
    the host's), ``None`` without numba."""
    if numba_version() is None:
        return None
    import llvmlite.binding
    import numba

    return str(numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name())


def run_identity(task: str, method: str, seed: int, settings: RunSettings) -> dict[str, Any]:
    """Everything a run's numbers depend on, the machine's instruction set
    included: torch's CPU kernels (and the numba pass) round differently on
    AVX2 and AVX-512, so a record made on one is retrained on the other."""
    identity = {
        "task": task,
        "method": method,
        "seed": seed,
        "settings": asdict(settings),
        "sources": sources_digest(method),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
    }
    if is_gac_method(method):
        identity["numba"] = numba_version()
        identity["numba_cpu"] = numba_target()
    return identity


def run_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def record_path(out: Path, identity: dict[str, Any]) -> Path:
    name = f"{identity['task']}--{identity['method']}--seed{identity['seed']}--{run_key(identity)[:16]}.json"
    return out / "runs" / name


def write_record(path: Path, identity: dict[str, Any], result: RunResult) -> None:
    """One run's record; NaN stays NaN (Python's JSON reads it back), so a
    loaded record equals the trained one exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"schema": RECORD_SCHEMA, "key": run_key(identity), "identity": identity, "result": result.to_dict()}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record))
    partial.replace(path)  # a run interrupted while writing leaves no half record behind


def load_record(path: Path, identity: dict[str, Any]) -> RunResult | None:
    """The stored result of the run ``identity``, or None when there is none
    (or the file holds another run: a key prefix collision)."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("schema") != RECORD_SCHEMA or record.get("key") != run_key(identity):
        return None
    return RunResult(**record["result"])


def grid_plan(tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> list[RunPlan]:
    """Every (task, method, seed), seed by seed: an interrupted suite holds
    whole seeds of every method, the paired comparisons' unit."""
    return [(task, method, seed) for seed in seeds for task in tasks for method in dict.fromkeys(methods)]


def run_suite(
    plan: Sequence[RunPlan],
    settings: RunSettings,
    out: Path,
    *,
    command: str,
    jobs: int = 1,
    reuse: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """``run_plan``, then the report of its runs (``report.md``,
    ``report.json``, figures) written into ``out`` and returned."""
    started = time.perf_counter()
    runs, reused = run_plan(plan, settings, out, jobs=jobs, reuse=reuse, show_progress=show_progress)
    report = build_report(
        runs, settings, command=command, total_wall_s=time.perf_counter() - started, jobs=jobs, reused=reused
    )
    write_outputs(report, runs, out)
    return report


def run_plan(
    plan: Sequence[RunPlan],
    settings: RunSettings,
    out: Path,
    *,
    jobs: int = 1,
    reuse: bool = False,
    show_progress: bool = True,
) -> tuple[list[RunResult], int]:
    """Train (or, with ``reuse``, load) every (task, method, seed) of
    ``plan``; its runs in its order, and how many were loaded.

    ``jobs > 1`` trains that many runs at once in worker processes. Results
    do not depend on it: every run builds its task and seeds itself, and
    uses ``settings.threads`` torch threads wherever it runs. Each run's
    record is written to ``out/runs/`` as soon as it finishes, so ``reuse``
    resumes an interrupted suite where it stopped.
    """
    if not plan:
        raise ValueError("plan must name at least one (task, method, seed)")
    for name, values, known in (
        ("task", [p[0] for p in plan], SUITE),
        ("method", [p[1] for p in plan], METHODS),
    ):
        unknown = sorted({value for value in values if value not in known})
        if unknown:
            raise ValueError(f"unknown {name}(s) {unknown}; choose from {sorted(known)}")
    plan = list(dict.fromkeys(plan))  # a run named twice trains once
    identities = [run_identity(task, method, seed, settings) for task, method, seed in plan]
    paths = [record_path(out, identity) for identity in identities]
    results: dict[int, RunResult] = {}
    if reuse:
        for index, (path, identity) in enumerate(zip(paths, identities, strict=True)):
            stored = load_record(path, identity)
            if stored is not None:
                results[index] = stored
    reused = len(results)
    to_train = [index for index in range(len(plan)) if index not in results]

    def finished(index: int, result: RunResult) -> None:
        write_record(paths[index], identities[index], result)
        results[index] = result

    with tqdm(total=len(to_train) * settings.steps, disable=not show_progress, unit="step", dynamic_ncols=True) as bar:
        if jobs <= 1 or len(to_train) <= 1:
            for index in to_train:
                task, method, seed = plan[index]
                bar.set_description(f"{task} {method} seed {seed}")
                finished(index, train_one(task, method, seed, settings, progress=bar.update))
        else:
            _train_in_workers([(index, plan[index]) for index in to_train], settings, jobs, bar, finished)
    return [results[index] for index in range(len(plan))], reused


def _train_in_workers(
    plan: Sequence[tuple[int, RunPlan]],
    settings: RunSettings,
    jobs: int,
    bar: tqdm,
    finished: Callable[[int, RunResult], None],
) -> None:
    """Train ``plan`` in ``jobs`` spawned processes; ``finished(index,
    result)`` runs here as each one completes."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with context.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        steps_done = manager.Queue()
        futures: dict[Future[RunResult], int] = {
            pool.submit(_worker_run, task, method, seed, settings, steps_done): index
            for index, (task, method, seed) in plan
        }
        bar.set_description(f"{len(plan)} runs, {jobs} at a time")
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while not steps_done.empty():
                bar.update(steps_done.get())
            for future in done:
                finished(futures[future], future.result())


def _worker_run(task: str, method: str, seed: int, settings: RunSettings, steps_done: Any) -> RunResult:
    counted = 0

    def progress(n: int) -> None:
        nonlocal counted
        counted += n
        if counted >= PROGRESS_EVERY:
            steps_done.put(counted)
            counted = 0

    result = train_one(task, method, seed, settings, progress=progress)
    if counted:
        steps_done.put(counted)
    return result
