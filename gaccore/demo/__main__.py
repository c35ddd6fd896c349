"""``gaccore demo``: GAC against today's mixing schedules on a small policy.

    gaccore demo                      # quick: every main method, 1 seed, < 5 min on 2 cores
    gaccore demo --full               # + the GAC ablations, more steps, 3 seeds
    gaccore demo --methods gac chord --seeds 2 --steps 300 --out my-run
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from gaccore.demo.report import build_report, write_outputs
from gaccore.demo.task import make_task
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
    show_progress: bool = True,
) -> dict:
    """Train every (method, seed), write the report into ``out``, return it."""
    task = make_task(TASK_SEED)
    started = time.perf_counter()
    runs: list[RunResult] = []
    total = len(methods) * len(seeds) * settings.steps
    with tqdm(total=total, disable=not show_progress, unit="step", dynamic_ncols=True) as bar:
        for seed in seeds:
            for method in methods:
                bar.set_description(f"{method} seed {seed}")
                runs.append(train_one(method, seed, task, settings, progress=bar.update))
                bar.set_postfix(acc=f"{runs[-1].final_accuracy:.3f}")
    report = build_report(runs, settings, task, command=command, total_wall_s=time.perf_counter() - started)
    written = write_outputs(report, runs, out)
    if show_progress:
        print(f"\n{report['verdict']}\nwrote: " + ", ".join(str(p) for p in written))
    return report


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
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    steps = args.steps or (FULL_STEPS if args.full else QUICK_STEPS)
    n_seeds = args.seeds or (FULL_SEEDS if args.full else QUICK_SEEDS)
    methods = args.methods or (MAIN_METHODS + ABLATIONS if args.full else MAIN_METHODS)
    if steps < 1 or n_seeds < 1:
        raise SystemExit("--steps and --seeds must be at least 1")
    settings = RunSettings(steps=steps, sft_loss=args.sft_loss, eval_every=max(1, min(50, steps // 10)))
    command = "gaccore " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    run_demo(methods, range(n_seeds), settings, args.out, command=command, show_progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    # ``python -m gaccore.demo [options]`` is ``gaccore demo [options]``.
    raise SystemExit(main(["demo", *sys.argv[1:]]))
