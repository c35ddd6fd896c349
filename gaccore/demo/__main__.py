"""``gaccore demo``: GAC against today's mixing schedules on a small policy,
under five kinds of expert (the suite), or on one task."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from gaccore.demo.runner import run_suite
from gaccore.demo.task import SUITE
from gaccore.demo.train import (
    MAIN_METHODS,
    METHODS,
    QUICK_SUITE_METHODS,
    QUICK_SUITE_TASKS,
    SUITE_METHODS,
    RunSettings,
    ablations,
)

USAGE = """\
gaccore demo                       # the quick suite: 2 tasks, 5 methods, 1 seed, 1000 steps (about 3 min)
gaccore demo --suite --full        # the full suite: every task, 3 seeds, 1000 steps
gaccore demo --suite --full --reuse   # resume or extend it: train only the runs without a record
gaccore demo --task carry-drop     # one task: the main methods, 1 seed, 1000 steps
gaccore demo --task carry-drop --full   # + the GAC ablations, 2000 steps, 3 seeds

Tasks (two-digit arithmetic; the expert's demonstrations are right or wrong in a known pattern):
""" + "\n".join(f"  {spec.name:14} {spec.description}" for spec in SUITE.values())

# The quick suite runs the full suite's steps on fewer tasks and methods: at
# 200 steps (five tasks, every method, three minutes) nothing had learned yet.
SUITE_STEPS = 1000
TASK_QUICK_STEPS, TASK_FULL_STEPS = 1000, 2000
QUICK_SEEDS, FULL_SEEDS = 1, 3


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
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
    which.add_argument("--task", choices=sorted(SUITE), metavar="NAME", help=f"one task: {', '.join(SUITE)}")
    demo.add_argument(
        "--full",
        action="store_true",
        help=f"suite: every task and suite method, {FULL_SEEDS} seeds x {SUITE_STEPS} steps; one task: {FULL_SEEDS} seeds x "
        f"{TASK_FULL_STEPS} steps with the GAC ablations",
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
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.task:
        tasks = [args.task]
        steps = args.steps or (TASK_FULL_STEPS if args.full else TASK_QUICK_STEPS)
    else:
        tasks = list(SUITE) if args.full else QUICK_SUITE_TASKS
        steps = args.steps or SUITE_STEPS
    n_seeds = args.seeds or (FULL_SEEDS if args.full else QUICK_SEEDS)
    settings = RunSettings(steps=steps, sft_coef=args.sft_coef, eval_every=max(1, min(50, steps // 10)))
    if args.methods:
        methods = args.methods
    elif args.task:
        methods = MAIN_METHODS + ablations(settings) if args.full else MAIN_METHODS
    else:
        methods = SUITE_METHODS if args.full else QUICK_SUITE_METHODS
    command = "gaccore " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    report = run_suite(
        tasks,
        methods,
        range(n_seeds),
        settings,
        args.out,
        command=command,
        jobs=args.jobs,
        reuse=args.reuse,
        show_progress=not args.no_progress,
    )
    # The verdict is printed whatever the progress display: it is the command's answer.
    print(f"\n{report['verdict']['text']}\n\nreport: {args.out / 'report.md'} (figures and report.json beside it)")
    return 0


if __name__ == "__main__":
    # ``python -m gaccore.demo [options]`` is ``gaccore demo [options]``.
    raise SystemExit(main(["demo", *sys.argv[1:]]))
