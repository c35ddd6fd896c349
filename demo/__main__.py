"""``gaccore demo``: GAC against today's mixing schedules on a small policy,
under five kinds of expert (the suite), or on one task."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .methods import (
    MAIN_METHODS,
    METHODS,
    QUICK_METHODS,
    QUICK_SEEDS,
    QUICK_TASKS,
    SCHEDULE_METHODS,
    SCHEDULE_SEEDS,
    SCHEDULE_TASKS,
    SUITE_SEEDS,
    TRACK_TASKS,
    TRACK_U,
    TRACK_V,
    ablations,
)
from .runner import RunPlan, grid_plan, run_suite
from .settings import RunSettings
from .study import run_study
from .task import FALSE_ACCEPT, FALSE_REJECT, SUITE

USAGE = """\
gaccore demo                       # the quick demo: 1 task, 4 methods, 2 seeds (about 5.5 min on 2 cores)
gaccore demo --suite --full        # the full suite: two tracks x 5 tasks x 5 seeds, and the schedule question
gaccore demo --suite --full --reuse   # resume or extend it: train only the runs without a record
gaccore demo --study --reuse       # the plan study: CHORD planned right and wrong against a rule without a plan
gaccore demo --task carry-drop     # one task: the main methods, 1 seed
gaccore demo --task carry-drop --full   # + the GAC ablations, 3 seeds
gaccore demo --task carry-drop sub-borrow --methods sft-filtered gac-verified --seeds 5 --checker-errors 0 0
                                   # chosen tasks and methods, scored by an exact checker

Every run: 2000 steps. Tasks (two-digit arithmetic; the expert's demonstrations are right or wrong in a
known pattern; a checker with 30% false accepts and 10% false rejects scores them, unless
--checker-errors says otherwise):
""" + "\n".join(f"  {spec.name:14} {spec.description}" for spec in SUITE.values())

TASK_FULL_SEEDS = 3


def suite_plan(full: bool, seeds: int | None) -> list[RunPlan]:
    """The quick demo, or the full suite: track U and track V on every task,
    then the schedule question on three tasks with fewer seeds; seed by seed,
    so an interrupted suite holds whole seeds."""
    if not full:
        return grid_plan(QUICK_TASKS, QUICK_METHODS, range(seeds or QUICK_SEEDS))
    n = seeds or SUITE_SEEDS
    plan: list[RunPlan] = []
    for seed in range(n):
        plan += grid_plan(TRACK_TASKS, TRACK_U + TRACK_V, [seed])
        if seed < min(n, SCHEDULE_SEEDS):
            plan += grid_plan(SCHEDULE_TASKS, SCHEDULE_METHODS, [seed])
    return plan


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def rate(text: str) -> float:
    """An argparse type: a probability in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gaccore", description="gaccore command line")
    commands = root.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a small policy with GAC and today's schedules, side by side",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = demo.add_mutually_exclusive_group()
    which.add_argument("--suite", action="store_true", help="every task of the suite (the default)")
    which.add_argument(
        "--study",
        action="store_true",
        help="the plan study: its pilot, the selection of its regimes, its main runs (docs/demo.md)",
    )
    which.add_argument(
        "--task",
        nargs="+",
        choices=sorted(SUITE),
        metavar="NAME",
        help=f"one task or a few: {', '.join(SUITE)}",
    )
    demo.add_argument(
        "--full",
        action="store_true",
        help=f"suite: both tracks on every task, {SUITE_SEEDS} seeds, and the schedule question; one task: "
        f"{TASK_FULL_SEEDS} seeds with the GAC ablations",
    )
    demo.add_argument("--out", type=Path, default=Path("gaccore-demo"), help="output directory (default: gaccore-demo)")
    demo.add_argument("--seeds", type=positive_int, help="number of training seeds (0, 1, ...)")
    demo.add_argument("--steps", type=positive_int, help="optimizer steps per run")
    demo.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(METHODS),
        metavar="METHOD",
        help=f"methods to run, from: {', '.join(METHODS)}",
    )
    demo.add_argument(
        "--sft-coef",
        choices=("nll", "phi"),
        default="nll",
        help="SFT loss for every method: plain NLL (default) or CHORD's token-weighted phi",
    )
    demo.add_argument(
        "--jobs",
        type=positive_int,
        default=min(2, os.cpu_count() or 1),
        help="runs trained at once, one process each (default: 2, or 1 on one core); results do not depend on it",
    )
    demo.add_argument(
        "--reuse",
        action="store_true",
        help="load a run from OUT/runs/ instead of training it when its record has the same task, method, seed, "
        "settings and source files",
    )
    demo.add_argument(
        "--checker-errors",
        nargs=2,
        type=rate,
        metavar=("FALSE_ACCEPT", "FALSE_REJECT"),
        default=(FALSE_ACCEPT, FALSE_REJECT),
        help="the checker's chance to accept a wrong demonstration and to reject a right one "
        f"(default: {FALSE_ACCEPT} {FALSE_REJECT}; 0 0 is an exact checker)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    steps = args.steps or RunSettings().steps
    false_accept, false_reject = args.checker_errors
    settings = RunSettings(
        steps=steps,
        sft_coef=args.sft_coef,
        eval_every=max(1, min(50, steps // 10)),
        false_accept=false_accept,
        false_reject=false_reject,
    )
    if args.task:
        methods = args.methods or (MAIN_METHODS + ablations(settings) if args.full else MAIN_METHODS)
        plan = grid_plan(args.task, methods, range(args.seeds or (TASK_FULL_SEEDS if args.full else 1)))
    elif args.methods:
        plan = grid_plan(list(SUITE) if args.full else QUICK_TASKS, args.methods, range(args.seeds or 1))
    else:
        plan = suite_plan(args.full, args.seeds)
    command = "gaccore " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if args.study:
        selection, _, main_runs, study_report = run_study(
            settings, args.out, jobs=args.jobs, reuse=args.reuse, show_progress=not args.no_progress, command=command
        )
        print(f"\nthe plan study: {len(main_runs)} main runs on {', '.join(selection.regimes)}; {args.out}/runs/")
        print("\n" + "\n".join(study_report["verdict"]))
        print(f"\nreport: {args.out / 'report.md'} (figures and report.json beside it)")
        return 0
    report = run_suite(
        plan,
        settings,
        args.out,
        command=command,
        jobs=args.jobs,
        reuse=args.reuse,
        show_progress=not args.no_progress,
    )
    # The verdicts are printed whatever the progress display: they are the command's answer.
    for track in report["tracks"].values():
        if "verdict" in track:
            print(f"\n{track['title']}\n{track['verdict']['text']}")
    print(f"\nreport: {args.out / 'report.md'} (figures and report.json beside it)")
    return 0


if __name__ == "__main__":
    # ``python -m gaccore.demo [options]`` is ``gaccore demo [options]``.
    raise SystemExit(main(["demo", *sys.argv[1:]]))
