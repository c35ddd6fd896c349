"""The demo's outputs: ``report.json``, ``report.md`` and PNG figures.

Numbers in the report come from the run records only, and the verdict is
computed (``verdict``, a pure function of the accuracy table), never written
by hand, so it says whatever the runs say and no more: it claims that one
method beats another only with at least ``MIN_SEEDS`` seeds and a difference
of means larger than the seed spread.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import torch

from .methods import DESCRIPTIONS, METHODS, SCHEDULE_METHODS, SCHEDULE_OF, SUITE_SEEDS, is_gac_method
from .settings import TASK_SEED, RunResult, RunSettings
from .sources import SOURCE_DIRS
from .task import SUITE, make_suite_task
from .verdict import Comparison, compare, iqm_interval, regrets, stratified_interval, track_verdict

# 3: two tracks and the schedule question, with bootstrap intervals; no curves (runs/ holds them).
SCHEMA = "gaccore.demo.report/3"
# Numbers that measure the machine, not the training: left out of determinism checks.
TIMING_KEYS = ("wall_s_mean", "step_ms_mean", "controller_overhead_pct")
# The fewest seeds whose intervals the report calls a decision (the full suite's count).
DECIDING_SEEDS = SUITE_SEEDS


def track_title(name: str, settings: RunSettings) -> str:
    if name == "U":
        return "Track U: the expert cannot be checked (every rule sees the demonstrations as they are)"
    return (
        f"Track V: the checker scores the demonstrations too (false accepts {settings.false_accept:.0%}, "
        f"false rejects {settings.false_reject:.0%})"
    )


FloatArray = npt.NDArray[np.float64]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std; the std of one value is undefined (NaN), not 0."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), std


def area(run: RunResult) -> float:
    """The area under the held-out accuracy curve: the mean over the run's evaluations (how fast it learned)."""
    return float(np.mean(run.accuracy)) if run.accuracy else math.nan


# -- grids and tracks ----------------------------------------------------------------


def grid(
    runs: Sequence[RunResult], methods: Sequence[str], score: Any
) -> tuple[list[str], list[int], dict[str, FloatArray]]:
    """``score(run)`` as ``[task, seed]`` per method; the runs must cover every
    (task, method, seed) of their tasks and seeds exactly once."""
    chosen = [r for r in runs if r.method in methods]
    tasks = list(dict.fromkeys(r.task for r in chosen))
    seeds = sorted({r.seed for r in chosen})
    table = {m: np.full((len(tasks), len(seeds)), math.nan) for m in methods}
    for r in chosen:
        cell = (tasks.index(r.task), seeds.index(r.seed))
        if not math.isnan(table[r.method][cell]):
            raise ValueError(f"runs hold ({r.task}, {r.method}, seed {r.seed}) twice")
        table[r.method][cell] = score(r)
    for m, values in table.items():
        missing = np.argwhere(np.isnan(values))
        if missing.size:
            t, k = missing[0]
            raise ValueError(f"runs lack ({tasks[t]}, {m}, seed {seeds[k]}): a track needs a full grid")
    return tasks, seeds, table


def tracks_of(runs: Sequence[RunResult]) -> dict[str, list[str]]:
    """The tracks of the methods in ``runs`` (the schedule question's aside):
    track V holds the rules that read the checker's scores or drop the
    demonstrations it rejects, track U every other."""
    present = [m for m in dict.fromkeys(r.method for r in runs) if METHODS[m].schedule_scale == 1.0]
    checked = [m for m in present if METHODS[m].reads_scores or METHODS[m].filtered]
    tracks = {"U": [m for m in present if m not in checked], "V": checked}
    return {name: methods for name, methods in tracks.items() if methods}


def _track_report(name: str, runs: Sequence[RunResult], methods: list[str], settings: RunSettings) -> dict[str, Any]:
    tasks, seeds, final = grid(runs, methods, lambda r: r.final_accuracy)
    _, _, curve_area = grid(runs, methods, area)
    regret = regrets(final)
    summary = {
        m: {
            "final_mean": asdict(stratified_interval(final[m])),
            "final_iqm": asdict(iqm_interval(final[m])),
            "area_mean": asdict(stratified_interval(curve_area[m])),
            "mean_regret": float(regret[m].mean()),
            "worst_regret": float(regret[m].max()),
            "worst_task": tasks[int(regret[m].argmax())],
            "final_by_task": dict(zip(tasks, final[m].mean(axis=1).tolist(), strict=True)),
        }
        for m in methods
    }
    candidates = [m for m in methods if is_gac_method(m)]
    baselines = [m for m in methods if not is_gac_method(m)]
    report: dict[str, Any] = {"title": track_title(name, settings), "tasks": tasks, "seeds": seeds, "methods": summary}
    if candidates and baselines:
        judged = track_verdict(name, final, curve_area, candidates, baselines, deciding_seeds=DECIDING_SEEDS)
        report["verdict"] = {
            "text": judged.text,
            "decided": judged.decided,
            "recommended": judged.recommended,
            "checks": [
                {
                    "method": check.method,
                    "clears": check.clears if judged.decided else None,
                    "worst_regret": check.worst_regret,
                    "regret_limit": check.regret_limit,
                    "final": {b: _comparison(c) for b, c in check.final.items()},
                    "area": {b: _comparison(c) for b, c in check.area.items()},
                }
                for check in judged.checks
            ],
        }
    return report


def _comparison(comparison: Comparison) -> dict[str, Any]:
    return {
        "difference": asdict(comparison.difference),
        "probability_of_improvement": asdict(comparison.probability_of_improvement),
        "word": comparison.word(),
    }


def _schedule_report(runs: Sequence[RunResult]) -> dict[str, Any] | None:
    """Each schedule planned for half and for twice the run against the same
    method planned right, on the tasks and seeds both ran; then GAC's loss
    from a misplanned prior against CHORD's from a misplanned schedule."""
    present = {r.method for r in runs}
    variants = [v for v in SCHEDULE_METHODS if v in present and SCHEDULE_OF[v] in present]
    if not variants:
        return None
    rows = {}
    losses: dict[str, FloatArray] = {}
    for variant in variants:
        planned = SCHEDULE_OF[variant]
        keys = {(r.task, r.seed) for r in runs if r.method == variant}
        both = [r for r in runs if (r.task, r.seed) in keys and r.method in (variant, planned)]
        tasks, seeds, final = grid(both, [variant, planned], lambda r: r.final_accuracy)
        losses[variant] = final[variant] - final[planned]
        rows[variant] = {
            "planned": planned,
            "tasks": tasks,
            "seeds": seeds,
            "final_mean": asdict(stratified_interval(final[variant])),
            "versus_planned": _comparison(compare(final[variant], final[planned])),
        }
    against_chord = {}
    for variant in variants:
        if variant.startswith("gac"):
            chord = "chord-" + variant.rsplit("-", 1)[1]
            if chord in losses and losses[chord].shape == losses[variant].shape:
                against_chord[variant] = _comparison(compare(losses[variant], losses[chord]))
    return {"variants": rows, "gac_loss_against_chord_loss": against_chord}


# -- summaries -------------------------------------------------------------------


def summarize(runs: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Per-method aggregates over seeds, in first-seen method order."""
    by_method: dict[str, list[RunResult]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for method, records in by_method.items():
        accuracy_mean, accuracy_std = _mean_std([r.final_accuracy for r in records])
        area_of_curve_mean, area_of_curve_std = _mean_std([area(r) for r in records])
        hard_mean, hard_std = _mean_std([r.accuracy_carry[-1] for r in records])
        area_mean, area_std = _mean_std([r.kl_drift_area for r in records])
        summary[method] = {
            "seeds": [r.seed for r in records],
            "final_accuracy": [r.final_accuracy for r in records],
            "final_accuracy_mean": accuracy_mean,
            "final_accuracy_std": accuracy_std,
            "area_mean": area_of_curve_mean,
            "area_std": area_of_curve_std,
            "best_accuracy_mean": float(np.mean([max(r.accuracy) for r in records])),
            "carry_accuracy_mean": hard_mean,
            "carry_accuracy_std": hard_std,
            "no_carry_accuracy_mean": float(np.mean([r.accuracy_no_carry[-1] for r in records])),
            "kl_drift_area_mean": area_mean,
            "kl_drift_area_std": area_std,
            "large_shifts_mean": float(np.mean([r.large_shifts for r in records])),
            "mean_mu": float(np.mean([np.mean(r.mu) for r in records])),
            "wall_s_mean": float(np.mean([r.wall_s for r in records])),
            "step_ms_mean": float(np.mean([1000.0 * r.step_s / len(r.mu) for r in records])),
            "controller_overhead_pct": float(
                100.0 * sum(r.controller_s for r in records) / sum(r.step_s for r in records)
            ),
        }
    return summary


def _environment(settings: RunSettings, jobs: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": settings.threads,
        "jobs": jobs,
        "git_commit": _git_commit(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The commit of the checkout the demo runs from, ``+dirty`` with
    uncommitted edits of tracked files; None outside a git checkout."""

    def git(*args: str) -> str:
        where = SOURCE_DIRS["gaccore"].parent
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def build_report(
    runs: Sequence[RunResult],
    settings: RunSettings,
    *,
    command: str,
    total_wall_s: float,
    jobs: int = 1,
    reused: int = 0,
) -> dict[str, Any]:
    tracks = {name: _track_report(name, runs, methods, settings) for name, methods in tracks_of(runs).items()}
    tasks = {}
    for name in dict.fromkeys(r.task for r in runs):
        spec = SUITE[name]
        task = make_suite_task(name, TASK_SEED, false_accept=settings.false_accept, false_reject=settings.false_reject)
        accepted = task.train_demo_score.astype(bool)
        right = task.train_demo_reward.astype(bool)
        tasks[name] = {
            **asdict(spec),
            "n_train": int(task.train_prompts.shape[0]),
            "n_test": int(task.test_prompts.shape[0]),
            "demo_error_rate": task.demo_error_rate,
            "accepted_share": float(accepted.mean()),
            "accepted_wrong_share": float((accepted & ~right).sum() / max(1, accepted.sum())),
            "methods": summarize([r for r in runs if r.task == name]),
        }
    return {
        "schema": SCHEMA,
        "command": command,
        "total_wall_s": total_wall_s,
        # What the whole suite costs, however many sittings it took: the runs' own times.
        "runs_wall_s": float(sum(r.wall_s for r in runs)),
        "runs_reused": reused,
        "n_runs": len(runs),
        "environment": _environment(settings, jobs),
        "settings": {**asdict(settings), "warmup_steps": settings.warmup_steps, "decay_steps": settings.decay_steps},
        "tracks": tracks,
        "schedule": _schedule_report(runs),
        "tasks": tasks,
    }


def deterministic_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report without anything that measures time or the machine, NaN
    as None (so that equal runs compare equal): for determinism checks."""
    tasks = {
        name: {k: v for k, v in task.items() if k != "methods"}
        | {"methods": {m: {k: v for k, v in s.items() if k not in TIMING_KEYS} for m, s in task["methods"].items()}}
        for name, task in report["tasks"].items()
    }
    return _finite_or_none({"tasks": tasks, "tracks": report["tracks"], "schedule": report["schedule"]})


# -- report.md ---------------------------------------------------------------------


def _pm(mean: float, std: float | None) -> str:
    """``mean ± std``, or the mean alone where the std is undefined (one seed; ``null`` in JSON)."""
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _ci(interval: dict[str, float]) -> str:
    low, high = interval["low"], interval["high"]
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{interval['estimate']:.3f}"
    return f"{interval['estimate']:.3f} [{low:.3f}, {high:.3f}]"


def _signed(interval: dict[str, float]) -> str:
    low, high = interval["low"], interval["high"]
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{interval['estimate']:+.3f}"
    return f"{interval['estimate']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _schedule_grid(schedule: dict[str, Any]) -> list[str]:
    """The tasks and seeds of the schedule comparisons: one line when every
    variant ran the same grid, else one line per variant."""
    grids = {name: (row["tasks"], row["seeds"]) for name, row in schedule["variants"].items()}

    def line(tasks: list[str], seeds: list[int]) -> str:
        return f"Tasks: {', '.join(tasks)}; seeds: {', '.join(map(str, seeds))}."

    if len({repr(grid) for grid in grids.values()}) == 1:
        return [line(*next(iter(grids.values()))), ""]
    return [*(f"- {name}: {line(*grid)}" for name, grid in grids.items()), ""]


def _left_out(report: dict[str, Any]) -> list[str]:
    """What the suite does not measure, so a reader does not read an absence
    as a result."""
    present = {method for task in report["tasks"].values() for method in task["methods"]}
    items = []
    if "pure-rl" not in present:
        items.append(
            "- Pure RL (`pure-rl`, mu = 0): it learns nothing on these tasks (held-out accuracy about 0.02 "
            "after 2000 steps) and never reads a demonstration, so it belongs to neither track."
        )
    settings = report["settings"]
    if "V" in report["tracks"] and (settings["false_accept"] > 0 or settings["false_reject"] > 0):
        items.append(
            f"- A checker without errors: track V has one checker, with {settings['false_accept']:.0%} false "
            f"accepts on wrong demonstrations and {settings['false_reject']:.0%} false rejects on right ones. How "
            "the rules compare when every accepted demonstration is right is not measured here."
        )
    schedule = report["schedule"]
    if schedule:
        track_seeds = max((len(t["seeds"]) for t in report["tracks"].values()), default=0)
        schedule_seeds = max(len(row["seeds"]) for row in schedule["variants"].values())
        schedule_tasks = max(len(row["tasks"]) for row in schedule["variants"].values())
        if schedule_seeds < track_seeds or schedule_tasks < len(report["tasks"]):
            items.append(
                f"- The schedule question runs on {schedule_tasks} of the {len(report['tasks'])} tasks with "
                f"{schedule_seeds} seed(s), against {track_seeds} for the tracks: the seeds went to the "
                "tracks' verdicts first, so its intervals are wider and it decides less."
            )
    return items or ["Nothing: every method, checker setting and question of the suite ran in full."]


def write_markdown(report: dict[str, Any], path: Path) -> None:
    settings, env = report["settings"], report["environment"]
    lines = [
        "# gaccore demo: hybrid SFT + RL under five kinds of expert",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {env['platform']}, {env['cpu']} ({env['cpu_count']} CPUs), Python {env['python']}, "
        f"torch {env['torch']} with {env['torch_threads']} thread(s) per run, {env['jobs']} run(s) at a time; "
        f"git commit {env['git_commit'] or 'unknown'}; {report['n_runs']} runs, wall time "
        f"{report['total_wall_s']:.0f} s"
        + (f" ({report['runs_reused']} run(s) loaded from earlier records)" if report["runs_reused"] else "")
        + f"; the runs' own times sum to {report['runs_wall_s'] / 3600:.1f} hours of one core, about "
        f"{report['runs_wall_s'] / 3600 / env['jobs']:.1f} hours at {env['jobs']} at a time.",
        "",
        f"Every method: {settings['steps']} steps of {settings['prompts_per_step']} prompts x "
        f"{settings['group_size']} rollouts plus their {settings['prompts_per_step']} demonstrations; AdamW lr "
        f"{settings['lr']}; SFT token weighting `{settings['sft_coef']}`; KL target {settings['kl_target']}; "
        f"evaluated every {settings['eval_every']} steps; the same settings on every task, no per-task tuning. "
        "The same seed gives every method the same initial weights and the same prompt order.",
        "",
        "Two numbers per run: the final held-out accuracy, and the area under the accuracy curve (the mean over "
        "the evaluations: how fast it learned). Intervals are 95% stratified bootstrap intervals over seeds "
        "(each task's seeds resampled on their own); a comparison is paired by seed, and a method *beats* "
        "another only when the interval of the mean paired difference lies above zero.",
    ]
    for track in report["tracks"].values():
        lines += ["", f"## {track['title']}", ""]
        lines += [
            f"Tasks: {', '.join(track['tasks'])}; seeds: {', '.join(map(str, track['seeds']))}.",
            "",
            "| method | final accuracy, mean | final, IQM | curve area, mean | mean regret | worst regret (task) |",
            "|---|---|---|---|---|---|",
        ]
        for method, m in track["methods"].items():
            lines.append(
                f"| {method} | {_ci(m['final_mean'])} | {_ci(m['final_iqm'])} | {_ci(m['area_mean'])} "
                f"| {m['mean_regret']:.3f} | {m['worst_regret']:.3f} ({m['worst_task']}) |"
            )
        if "verdict" in track:
            verdict = track["verdict"]
            lines += [
                "",
                "| candidate vs baseline | final: paired difference | P(improvement) | area: paired difference |",
                "|---|---|---|---|",
            ]
            for check in verdict["checks"]:
                for baseline, comparison in check["final"].items():
                    lines.append(
                        f"| {check['method']} vs {baseline} | {_signed(comparison['difference'])} "
                        f"({comparison['word']}) | {_ci(comparison['probability_of_improvement'])} "
                        f"| {_signed(check['area'][baseline]['difference'])} |"
                    )
            lines += ["", verdict["text"]]
            recommended = verdict["recommended"]
            if recommended:
                conclusion = f"Recommended for this track: {recommended}."
            elif verdict["decided"]:
                conclusion = "No gaccore mode clears this track's bar: the suite recommends none for it."
            else:
                conclusion = "These runs cannot decide the bar, so they recommend nothing."
            lines += ["", conclusion]
    schedule = report["schedule"]
    if schedule:
        lines += [
            "",
            "## A schedule planned for the wrong run length",
            "",
            "CHORD's schedule and GAC's prior are set from the run's length, which a user does not know in "
            "advance. Each variant below plans its schedule for half or for twice the actual run; the difference "
            "is its final accuracy minus that of the same method planned right, paired by seed.",
            "",
            *_schedule_grid(schedule),
            "| variant | final accuracy | against the right plan |",
            "|---|---|---|",
        ]
        for variant, row in schedule["variants"].items():
            comparison = row["versus_planned"]
            lines.append(
                f"| {variant} (vs {row['planned']}) | {_ci(row['final_mean'])} "
                f"| {_signed(comparison['difference'])} ({comparison['word']}) |"
            )
        if schedule["gac_loss_against_chord_loss"]:
            lines += ["", "GAC's change from a misplanned prior against CHORD's from the same misplanning:", ""]
            for variant, comparison in schedule["gac_loss_against_chord_loss"].items():
                lines.append(
                    f"- {variant}: {_signed(comparison['difference'])}: GAC {comparison['word']} CHORD "
                    "(above zero: GAC holds its accuracy better)."
                )
    lines += ["", "## Not in this suite", "", *_left_out(report)]
    lines += ["", "## Per task", ""]
    for name, task in report["tasks"].items():
        lines += [
            f"### {name}: {task['description']}",
            "",
            f"{task['n_train']} training pairs ({100 * task['demo_error_rate']:.1f}% of the expert's demonstrations "
            f"wrong; the checker accepts {100 * task['accepted_share']:.1f}% of them, of which "
            f"{100 * task['accepted_wrong_share']:.1f}% are wrong), {task['n_test']} held out.",
            "",
            "| method | final accuracy | curve area | hard-pair accuracy | KL-drift area | mean mu | step (ms) "
            "| controller overhead |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, s in task["methods"].items():
            lines.append(
                f"| {method} | {_pm(s['final_accuracy_mean'], s['final_accuracy_std'])} "
                f"| {_pm(s['area_mean'], s['area_std'])} | {s['carry_accuracy_mean']:.3f} "
                f"| {_pm(s['kl_drift_area_mean'], s['kl_drift_area_std'])} | {s['mean_mu']:.2f} "
                f"| {s['step_ms_mean']:.1f} | {s['controller_overhead_pct']:.2f}% |"
            )
        lines.append("")
    methods = list(dict.fromkeys(m for task in report["tasks"].values() for m in task["methods"]))
    lines += [
        "## Methods",
        "",
        "Every one with the same model, data, steps, batch and learning rate; no per-method tuning.",
        "",
        *[f"- `{m}`: {DESCRIPTIONS[m]}" for m in methods],
        "",
        "Columns: accuracy is greedy exact match on the held-out pairs (hard pairs: those that need a carry or "
        "a borrow); regret on a task: the best method's mean final accuracy there minus this method's; "
        "KL-drift area = sum over steps of max(0, KL - target), KL being the k3 KL of the rollouts to an EMA of "
        "the policy's weights; controller overhead = time in the rule's `update` as a share of the training step "
        "(the machine is shared by the runs, so step times do not compare methods' speed).",
        "",
        "Figures: `accuracy-<task>.png` (held-out accuracy, mean over seeds), `mu.png`, `kl.png`, `gac_proxies.png`. "
        "Each run's curves are in `runs/`.",
        "",
    ]
    path.write_text("\n".join(lines))


# -- figures -------------------------------------------------------------------------


def _curves(runs: Sequence[RunResult], attribute: str) -> FloatArray:
    return np.array([getattr(r, attribute) for r in runs], dtype=np.float64)


def _smooth(values: FloatArray, window: int) -> FloatArray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def write_figures(runs: Sequence[RunResult], out: Path) -> list[Path]:
    tasks = list(dict.fromkeys(r.task for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}  # more than ten methods repeat, dashed
    styles = {m: "--" if (is_gac_method(m) and m != "gac") or i >= 10 else "-" for i, m in enumerate(methods)}
    widths = {m: 2.4 if m == "gac" else 1.2 for m in methods}
    steps = len(runs[0].mu)
    window = max(1, steps // 50)
    written = []

    def of(task: str, method: str) -> list[RunResult]:
        return [r for r in runs if r.task == task and r.method == method]

    def plot(ax: Any, x: Any, y: FloatArray, method: str) -> None:
        ax.plot(x, y, styles[method], color=colors[method], lw=widths[method], label=method)

    def panels(rows: int, cols: int, width: float, height: float, sharey: bool = False) -> tuple[Any, Any]:
        return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=sharey)

    def finish(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    figures = (
        ("mu", "mu.png", "mu (SFT weight)", "mu per method, mean over seeds"),
        ("kl", "kl.png", "k3 KL to the EMA policy", f"KL drift, mean over seeds, moving average of {window} steps"),
    )
    for attribute, name, ylabel, title in figures:
        fig, axes = panels(rows, cols, 5.0, 3.6)
        for ax, task in zip(axes.flat, tasks, strict=False):
            for m in (m for m in methods if of(task, m)):  # the schedule question runs on some tasks only
                # HPT's per-prompt share and the KL are noisy step to step: a moving average shows the trend.
                smoothing = window if attribute == "kl" or m == "hpt" else 1
                curve = _smooth(_curves(of(task, m), attribute).mean(axis=0), smoothing)
                plot(ax, np.arange(curve.size) + smoothing - 1, curve, m)
            ax.set(xlabel="step", ylabel=ylabel, title=task)
            if attribute == "kl":
                ax.set_yscale("log")
        spare = axes.flat[len(tasks) :]
        for ax in spare:
            ax.axis("off")
        if len(spare):  # the legend gets a free panel of its own
            spare[0].legend(*axes.flat[0].get_legend_handles_labels(), loc="center", ncol=2)
        else:
            axes.flat[0].legend(fontsize=6, ncol=2)
        fig.suptitle(title)
        finish(fig, name)

    for task in tasks:
        fig, axes = panels(1, 2, 5.0, 4.2, sharey=True)
        for m in (m for m in methods if of(task, m)):
            eval_steps = of(task, m)[0].eval_steps
            for ax, attribute in zip(axes.flat, ("accuracy", "accuracy_carry"), strict=True):
                plot(ax, eval_steps, _curves(of(task, m), attribute).mean(axis=0), m)
        axes[0, 0].set(xlabel="step", ylabel="held-out exact match", title=f"{task}: all pairs")
        axes[0, 1].set(xlabel="step", title=f"{task}: pairs with a carry or borrow")
        axes[0, 0].legend(fontsize=7, ncol=2)
        finish(fig, f"accuracy-{task}.png")

    gac_tasks = [task for task in tasks if of(task, "gac")]
    if gac_tasks:
        keys = [
            ("ema_disagreement", "disagreement D (EMA)"),
            ("ema_var_sft", "SFT noise vS (EMA)"),
            ("ema_var_rl", "RL noise vR (EMA)"),
            ("rho", "rho and the estimate mu^ (dotted)"),
        ]
        fig, axes = panels(len(gac_tasks), len(keys), 3.2, 2.4)
        for row, task in zip(axes, gac_tasks, strict=True):
            for ax, (key, title) in zip(row, keys, strict=True):
                for r in of(task, "gac"):
                    (line,) = ax.plot(r.proxies[key], lw=1, label=f"seed {r.seed}")
                    if key == "rho":
                        ax.plot(r.proxies["estimate"], ":", lw=1, color=line.get_color())
                ax.set_title(f"{task}: {title}", fontsize=8)
        axes[0, -1].legend(fontsize=6)
        finish(fig, "gac_proxies.png")
    return written


def write_outputs(report: dict[str, Any], runs: Sequence[RunResult], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(_finite_or_none(report), indent=1, allow_nan=False))
    write_markdown(report, out / "report.md")
    return [out / "report.json", out / "report.md", *write_figures(runs, out)]


def _finite_or_none(value: Any) -> Any:
    """JSON-ready copy: non-finite floats (undefined proxies) become ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
