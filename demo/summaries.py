"""The report's numbers, from the run records only: per track each method's
intervals, regrets and verdict (``verdict``), the schedule question, and
per task each method's means over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt

from .methods import METHODS, SCHEDULE_METHODS, SCHEDULE_OF, SUITE_SEEDS, is_gac_method
from .settings import TASK_SEED, RunResult, RunSettings
from .task import SUITE, make_suite_task
from .verdict import Comparison, compare, iqm_interval, regrets, stratified_interval, track_verdict

# The fewest seeds whose intervals the report calls a decision (the full suite's count).
DECIDING_SEEDS = SUITE_SEEDS

FloatArray = npt.NDArray[np.float64]


def track_title(name: str, settings: RunSettings) -> str:
    if name == "U":
        return "Track U: the expert cannot be checked (every rule sees the demonstrations as they are)"
    return (
        f"Track V: the checker scores the demonstrations too (false accepts {settings.false_accept:.0%}, "
        f"false rejects {settings.false_reject:.0%})"
    )


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


def track_report(name: str, runs: Sequence[RunResult], methods: list[str], settings: RunSettings) -> dict[str, Any]:
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


def schedule_report(runs: Sequence[RunResult]) -> dict[str, Any] | None:
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
            "step_ms_mean": float(np.mean([1000.0 * r.step_s / r.eval_steps[-1] for r in records])),
            "controller_overhead_pct": float(
                100.0 * sum(r.controller_s for r in records) / sum(r.step_s for r in records)
            ),
        }
    return summary


def task_summary(name: str, runs: Sequence[RunResult], settings: RunSettings) -> dict[str, Any]:
    """The task ``name`` (its expert and the checker's verdicts on its demonstrations) and its runs' summaries."""
    spec = SUITE[name]
    task = make_suite_task(name, TASK_SEED, false_accept=settings.false_accept, false_reject=settings.false_reject)
    accepted = task.train_demo_score.astype(bool)
    right = task.train_demo_reward.astype(bool)
    return {
        **asdict(spec),
        "n_train": int(task.train_prompts.shape[0]),
        "n_test": int(task.test_prompts.shape[0]),
        "demo_error_rate": task.demo_error_rate,
        "accepted_share": float(accepted.mean()),
        "accepted_wrong_share": float((accepted & ~right).sum() / max(1, accepted.sum())),
        "methods": summarize([r for r in runs if r.task == name]),
    }
