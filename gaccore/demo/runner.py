"""Training every (method, seed) of a comparison, in this process or in
worker processes, and writing the report.

Kept out of ``__main__`` so that worker processes can import the function
they run (``python -m gaccore.demo`` names its module ``__main__``).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gaccore.demo.report import build_report, write_outputs
from gaccore.demo.task import ArithmeticTask, make_task
from gaccore.demo.train import RunResult, RunSettings, train_one

TASK_SEED = 0


def run_demo(
    methods: Sequence[str],
    seeds: Sequence[int],
    settings: RunSettings,
    out: Path,
    *,
    command: str,
    jobs: int = 1,
    show_progress: bool = True,
) -> dict:
    """Train every (method, seed), write the report into ``out``, return it.

    ``jobs > 1`` trains that many runs at once in worker processes. Results
    do not depend on it: every run seeds itself and uses
    ``settings.threads`` torch threads wherever it runs.
    """
    task = make_task(TASK_SEED)
    started = time.perf_counter()
    plan = [(method, seed) for seed in seeds for method in methods]
    with tqdm(total=len(plan) * settings.steps, disable=not show_progress, unit="step", dynamic_ncols=True) as bar:
        if jobs <= 1:
            runs = []
            for method, seed in plan:
                bar.set_description(f"{method} seed {seed}")
                runs.append(train_one(method, seed, task, settings, progress=bar.update))
        else:
            runs = _train_in_workers(plan, task, settings, jobs, bar)
    report = build_report(runs, settings, task, command=command, total_wall_s=time.perf_counter() - started)
    written = write_outputs(report, runs, out)
    if show_progress:
        print(f"\n{report['verdict']}\nwrote: " + ", ".join(str(p) for p in written))
    return report


# Workers report progress every this many steps (one message per step would cost more than it shows).
PROGRESS_EVERY = 10


def _train_in_workers(
    plan: Sequence[tuple[str, int]], task: ArithmeticTask, settings: RunSettings, jobs: int, bar: tqdm
) -> list[RunResult]:
    """Run ``plan`` in ``jobs`` spawned processes; results in plan order."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with context.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        steps_done = manager.Queue()
        futures = [pool.submit(_worker_run, method, seed, task, settings, steps_done) for method, seed in plan]
        bar.set_description(f"{len(plan)} runs, {jobs} at a time")
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while not steps_done.empty():
                bar.update(steps_done.get())
        while not steps_done.empty():
            bar.update(steps_done.get())
        return [future.result() for future in futures]


def _worker_run(method: str, seed: int, task: ArithmeticTask, settings: RunSettings, steps_done: Any) -> RunResult:
    counted = 0

    def progress(n: int) -> None:
        nonlocal counted
        counted += n
        if counted >= PROGRESS_EVERY:
            steps_done.put(counted)
            counted = 0

    result = train_one(method, seed, task, settings, progress=progress)
    if counted:
        steps_done.put(counted)
    return result
