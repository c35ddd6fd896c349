"""``gaccore demo``: GAC against today's mixing schedules on a small policy.

    gaccore demo                      # quick: every main method, 1 seed, < 5 min on 2 cores
    gaccore demo --full               # + the GAC ablations, more steps, 3 seeds
    gaccore demo --methods gac chord --seeds 2 --steps 300 --out my-run
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gaccore.demo.report import build_report, write_outputs
from gaccore.demo.task import AdditionTask, make_task
from gaccore.demo.train import ABLATIONS, MAIN_METHODS, METHODS, RunResult, RunSettings, train_one

QUICK_STEPS, FULL_STEPS = 600, 1500
QUICK_SEEDS, FULL_SEEDS = 1, 3
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
    with tqdm(total=len(plan) * settings.steps, disable=not show_progress, unit="step",
              dynamic_ncols=True) as bar:
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
    plan: Sequence[tuple[str, int]], task: AdditionTask, settings: RunSettings, jobs: int, bar: tqdm
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


def _worker_run(method: str, seed: int, task: AdditionTask, settings: RunSettings, steps_done: Any) -> RunResult:
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


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gaccore", description="gaccore command line")
    commands = root.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a small policy with GAC and today's schedules, side by side",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--full", action="store_true",
                      help=f"{FULL_STEPS} steps, {FULL_SEEDS} seeds, main methods and GAC ablations")
    demo.add_argument("--out", type=Path, default=Path("gaccore-demo"), help="output directory")
    demo.add_argument("--seeds", type=int, help="number of training seeds (0, 1, ...)")
    demo.add_argument("--steps", type=int, help="optimizer steps per run")
    demo.add_argument("--methods", nargs="+", choices=sorted(METHODS), metavar="METHOD",
                      help=f"methods to run, from: {', '.join(METHODS)}")
    demo.add_argument("--sft-loss", choices=("phi", "nll"), default="phi",
                      help="SFT loss for every method: CHORD's token-weighted phi (default) or plain NLL")
    demo.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                      help="runs trained at once, one process each (default: 2, or 1 on one core); "
                      "results do not depend on it")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    steps = args.steps or (FULL_STEPS if args.full else QUICK_STEPS)
    n_seeds = args.seeds or (FULL_SEEDS if args.full else QUICK_SEEDS)
    methods = args.methods or (MAIN_METHODS + ABLATIONS if args.full else MAIN_METHODS)
    if steps < 1 or n_seeds < 1 or args.jobs < 1:
        raise SystemExit("--steps, --seeds and --jobs must be at least 1")
    settings = RunSettings(steps=steps, sft_loss=args.sft_loss, eval_every=max(1, min(50, steps // 10)))
    command = "gaccore " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    run_demo(methods, range(n_seeds), settings, args.out, command=command, jobs=args.jobs,
             show_progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    # ``python -m gaccore.demo [options]`` is ``gaccore demo [options]``.
    raise SystemExit(main(["demo", *sys.argv[1:]]))
