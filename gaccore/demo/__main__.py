"""``gaccore demo``: GAC against today's mixing schedules on a small policy.

gaccore demo                      # quick: every main method, 1 seed, < 5 min on 2 cores
gaccore demo --full               # + the GAC ablations, more steps, 3 seeds
gaccore demo --methods gac chord --seeds 2 --steps 300 --out my-run
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from gaccore.demo.runner import run_demo
from gaccore.demo.train import MAIN_METHODS, METHODS, RunSettings, ablations

QUICK_STEPS, FULL_STEPS = 1000, 2000
QUICK_SEEDS, FULL_SEEDS = 1, 3


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gaccore", description="gaccore command line")
    commands = root.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a small policy with GAC and today's schedules, side by side",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--full", action="store_true", help=f"{FULL_STEPS} steps, {FULL_SEEDS} seeds, main methods and GAC ablations"
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
        "--sft-loss",
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
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    steps = args.steps if args.steps is not None else FULL_STEPS if args.full else QUICK_STEPS
    n_seeds = args.seeds if args.seeds is not None else FULL_SEEDS if args.full else QUICK_SEEDS
    settings = RunSettings(steps=steps, sft_loss=args.sft_loss, eval_every=max(1, min(50, steps // 10)))
    methods = args.methods or (MAIN_METHODS + ablations(settings) if args.full else MAIN_METHODS)
    command = "gaccore " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    run_demo(
        methods, range(n_seeds), settings, args.out, command=command, jobs=args.jobs, show_progress=not args.no_progress
    )
    return 0


if __name__ == "__main__":
    # ``python -m gaccore.demo [options]`` is ``gaccore demo [options]``.
    raise SystemExit(main(["demo", *sys.argv[1:]]))
