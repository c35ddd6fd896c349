"""The plan study's report: its numbers, from the run records and the
selection only, as round 3 of the research log declared them.

- **The regimes**: what the pilot measured on the development regime and
  every candidate (each CHORD plan's mean score, the best plan, the spread,
  the step where RL starts to pay), which were kept, and CHORD tuned once.
- **The bar**: the candidate against CHORD tuned once, against each
  regime's best plan (within ``SMALLEST_DIFFERENCE``), and against the
  misplanned plans; each an interval of the pooled paired difference.
- **Every arm**, losers included, and the comparisons reported beside the
  bar that decide nothing.
- **What the estimator does**: how far each GAC arm's mu strays from its
  prior, and how mu follows the rollouts' success rate.
- **Cost and provenance**.

Every comparison is the mean over the test regimes of each regime's mean
paired difference (paired by seed, on the seeds both arms have on every test
regime), with two 95% intervals, the stratified percentile bootstrap and
the stratified t-interval (``verdict``); the wider decides.
``study_markdown`` writes the text, ``study_figures`` the figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import study
from .provenance import environment
from .report import _finite_or_none
from .settings import RunResult, RunSettings
from .study_figures import write_study_figures
from .study_markdown import write_study_markdown
from .verdict import TIE, Interval, regrets, stratified_interval, stratified_t_interval, wider, width

SCHEMA = "gaccore.demo.study-report/1"
# The smallest difference the primary comparisons must detect (declared): the bar's margin to CHORD's best plan.
SMALLEST_DIFFERENCE = 0.03
FIFTHS = 5

Table = dict[tuple[str, str], dict[int, RunResult]]  # (regime, method) -> seed -> run
Arm = Mapping[str, str]  # regime -> the method that plays the arm there


def index(runs: Sequence[RunResult]) -> Table:
    """The runs by (regime, method) and seed; a run named twice (the pilot's
    CHORD runs are the main stage's own) counts once."""
    table: Table = {}
    for run in runs:
        table.setdefault((run.task, run.method), {})[run.seed] = run
    return table


def _shared_seeds(table: Table, regimes: Sequence[str], arms: Sequence[Arm]) -> list[int]:
    """The seeds every arm has on every regime."""
    held = [set(table.get((r, arm[r]), {})) for arm in arms for r in regimes]
    return sorted(set.intersection(*held)) if held else []


def _scores(table: Table, regimes: Sequence[str], arm: Arm, seeds: Sequence[int]) -> np.ndarray:
    """``study.score`` of ``arm`` as ``[regime, seed]``."""
    return np.array([[study.score(table[(r, arm[r])][s]) for s in seeds] for r in regimes], dtype=np.float64)


def two_intervals(values: np.ndarray) -> dict[str, Any]:
    """The mean over regimes of each regime's mean of ``values [regime,
    seed]`` with both intervals and the wider one, which decides."""
    bootstrap, t = stratified_interval(values), stratified_t_interval(values)
    used = wider(bootstrap, t)
    return {
        "estimate": used.estimate,
        "bootstrap": asdict(bootstrap),
        "t": asdict(t),
        "used": "bootstrap" if used is bootstrap else "t",
        "interval": asdict(used),
    }


def paired(
    table: Table, regimes: Sequence[str], a: Arm, b: Arm, *, seeds_below: int | None = None
) -> dict[str, Any] | None:
    """``a`` minus ``b``, paired by seed on the seeds both have on every
    regime (those below ``seeds_below``, if given); None without such seeds."""
    seeds = [s for s in _shared_seeds(table, regimes, [a, b]) if seeds_below is None or s < seeds_below]
    if not seeds:
        return None
    differences = _scores(table, regimes, a, seeds) - _scores(table, regimes, b, seeds)
    return {
        "seeds": seeds,
        "per_regime": dict(zip(regimes, differences.mean(axis=1).tolist(), strict=True)),
        **two_intervals(differences),
    }


def _plain(method: str, regimes: Sequence[str]) -> dict[str, str]:
    return {r: method for r in regimes}


def _arm_name(arm: Arm) -> str:
    methods = list(dict.fromkeys(arm.values()))
    return methods[0] if len(methods) == 1 else "CHORD's best plan of each regime"


# -- the regimes ---------------------------------------------------------------------------------------------------


def regimes_report(pilot: Sequence[RunResult], selection: study.Selection) -> dict[str, Any]:
    """What the pilot measured on every regime, and what the selection kept."""
    table = index(pilot)
    rows = {}
    for regime in (study.DEV_REGIME, *study.CANDIDATES):
        scores = selection.plan_scores[regime]
        chord = table.get((regime, study.PLANS[1.0]), {})
        best = selection.tuned_plan if regime == study.DEV_REGIME else selection.best_plan[regime]
        role = "development" if regime == study.DEV_REGIME else "kept" if regime in selection.regimes else "dropped"
        rows[regime] = {
            "role": role,
            "seeds": sorted(chord),
            "plan_scores": {study.PLANS[k]: v for k, v in scores.items()},
            "best_plan": study.PLANS[best],
            "spread": max(scores.values()) - min(scores.values()),
            "success_step": float(np.median([study.success_step(r) for r in chord.values()])) if chord else math.nan,
        }
    kept_steps = [rows[r]["success_step"] for r in selection.regimes]
    ratio = max(kept_steps) / min(kept_steps) if min(kept_steps) > 0 else math.nan
    best_plans = sorted({rows[r]["best_plan"] for r in selection.regimes})
    return {
        "development": study.DEV_REGIME,
        "regimes": rows,
        "kept": list(selection.regimes),
        "dropped": list(selection.dropped),
        "criteria": {
            "success_step_ratio": ratio,
            "ratio_needed": study.RL_DELAY_RATIO,
            "spans": bool(ratio >= study.RL_DELAY_RATIO),
            "best_plans": best_plans,
            "best_plans_differ": len(best_plans) >= 2,
            "met": selection.criteria_met,
        },
        "tuned_once": {"plan": study.PLANS[selection.tuned_plan], "scores": rows[study.DEV_REGIME]["plan_scores"]},
    }


# -- the bar -------------------------------------------------------------------------------------------------------


def bar_report(table: Table, selection: study.Selection) -> dict[str, Any]:
    """The declared bar: three conditions, each of one or two comparisons
    whose decision interval must lie above its threshold."""
    regimes = list(selection.regimes)
    candidate = _plain(study.CANDIDATE, regimes)
    tuned = study.PLANS[selection.tuned_plan]
    best = {r: study.PLANS[selection.best_plan[r]] for r in regimes}
    conditions = [
        ("beats CHORD tuned once", [(tuned, _plain(tuned, regimes))], 0.0),
        (
            f"ends within {SMALLEST_DIFFERENCE} of CHORD's best plan of each regime, or above it",
            [("best plan", best)],
            -SMALLEST_DIFFERENCE,
        ),
        (
            "loses less than CHORD planned for 0.25x and 4x the run",
            [(study.PLANS[k], _plain(study.PLANS[k], regimes)) for k in study.MISPLANNED],
            0.0,
        ),
    ]
    out = []
    for name, against, threshold in conditions:
        comparisons = []
        for label, arm in against:
            result = paired(table, regimes, candidate, arm)
            low = result["interval"]["low"] if result else math.nan
            holds = bool(low > threshold + (TIE if threshold == 0.0 else 0.0))
            comparisons.append(
                {"against": label, "methods": arm, "threshold": threshold, "holds": holds, **(result or {})}
            )
        out.append({"condition": name, "comparisons": comparisons, "holds": all(c["holds"] for c in comparisons)})
    comparisons = [c for condition in out for c in condition["comparisons"]]
    seeds = [len(c.get("seeds", [])) for c in comparisons]
    # Every interval computed (a regime with one seed has none): else the outcome describes the runs only.
    computable = all("interval" in c and math.isfinite(width(Interval(**c["interval"]))) for c in comparisons)
    return {
        "candidate": study.CANDIDATE,
        "regimes": regimes,
        "tuned_once": tuned,
        "best_plans": best,
        "conditions": out,
        "clears": all(condition["holds"] for condition in out),
        "fewest_seeds": min(seeds),
        "declared_seeds": study.primary_seeds(len(regimes)),
        "complete": min(seeds) >= study.primary_seeds(len(regimes)),
        "computable": computable,
    }


def _threshold(value: float) -> str:
    return "0" if value == 0.0 else f"{value:+.2f}"


def verdict_lines(bar: dict[str, Any]) -> list[str]:
    """The bar's outcome in words, one line per comparison and one for the verdict."""
    lines = []
    if not bar["computable"]:
        lines.append(
            f"Cannot decide: the bar's comparisons have {bar['fewest_seeds']} seed(s) per regime, too few for an "
            "interval. The outcome below describes these runs only."
        )
    elif not bar["complete"]:
        lines.append(
            f"Provisional: the bar's comparisons have {bar['fewest_seeds']} of the declared "
            f"{bar['declared_seeds']} seeds per regime (the study is not complete). The outcome below describes "
            "these runs; the declared verdict needs every seed."
        )
    for number, condition in enumerate(bar["conditions"], 1):
        for c in condition["comparisons"]:
            against = (
                f"CHORD's best plan of each regime ({', '.join(f'{r}: {m}' for r, m in c['methods'].items())})"
                if c["against"] == "best plan"
                else c["against"]
            )
            if "interval" not in c:
                lines.append(f"Condition {number}: {bar['candidate']} vs {against}: no seeds in common; does not hold.")
                continue
            i = c["interval"]
            interval = (
                f"[{i['low']:+.3f}, {i['high']:+.3f}] ({'t-interval' if c['used'] == 't' else 'bootstrap'}, the wider"
                if math.isfinite(width(Interval(**i)))
                else "(no interval"
            )
            lines.append(
                f"Condition {number}: {bar['candidate']} - {against}: {i['estimate']:+.3f} {interval}; "
                f"{len(c['seeds'])} seed(s) x {len(bar['regimes'])} regimes); needs the lower end above "
                f"{_threshold(c['threshold'])}: " + ("holds." if c["holds"] else "does not hold.")
            )
    failed = [str(n) for n, condition in enumerate(bar["conditions"], 1) if not condition["holds"]]
    outcome = (
        f"{bar['candidate']} clears the bar."
        if bar["clears"]
        else f"{bar['candidate']} does not clear the bar: condition(s) {', '.join(failed)} do not hold."
    )
    if not (bar["complete"] and bar["computable"]):
        outcome = "On these runs, " + outcome
    return [*lines, outcome]


# -- every arm -----------------------------------------------------------------------------------------------------


def arms_report(table: Table, selection: study.Selection) -> dict[str, Any]:
    """Every arm on the test regimes, losers included: its mean score with
    both intervals on the seeds it has on every regime, its per-regime
    means, and its worst regret on the seeds all arms share (a point
    comparison)."""
    regimes = list(selection.regimes)
    arms = [study.CANDIDATE, *study.PLANS.values(), *study.GAC_PLANS.values(), study.SCHEDULE_FREE_BASELINE]
    present = [m for m in arms if _shared_seeds(table, regimes, [_plain(m, regimes)])]
    shared = _shared_seeds(table, regimes, [_plain(m, regimes) for m in present])
    worst = {}
    if shared:
        regret = regrets({m: _scores(table, regimes, _plain(m, regimes), shared) for m in present})
        worst = {m: (float(regret[m].max()), regimes[int(regret[m].argmax())]) for m in present}
    rows = {}
    for m in arms:
        seeds = _shared_seeds(table, regimes, [_plain(m, regimes)])
        if not seeds:
            rows[m] = {"seeds": []}
            continue
        values = _scores(table, regimes, _plain(m, regimes), seeds)
        roles = []
        if m == study.CANDIDATE:
            roles.append("the candidate")
        if m == study.PLANS[selection.tuned_plan]:
            roles.append("CHORD tuned once")
        if m in (study.PLANS[k] for k in study.MISPLANNED):
            roles.append("misplanned (the bar)")
        best_on = [r for r in regimes if study.PLANS[selection.best_plan[r]] == m]
        if best_on:
            roles.append(f"best plan on {', '.join(best_on)}")
        rows[m] = {
            "seeds": seeds,
            "roles": roles,
            "score": two_intervals(values),
            "per_regime": dict(zip(regimes, values.mean(axis=1).tolist(), strict=True)),
            "worst_regret": worst.get(m, (math.nan, None))[0],
            "worst_regime": worst.get(m, (math.nan, None))[1],
        }
    reported = {}
    candidate = _plain(study.CANDIDATE, regimes)
    for other in (study.GAC_PLANS[1.0], study.SCHEDULE_FREE_BASELINE):
        reported[f"{study.CANDIDATE} - {other}"] = paired(table, regimes, candidate, _plain(other, regimes))
    for k, gac in study.GAC_PLANS.items():
        chord = study.PLANS[k]
        reported[f"{gac} - {chord}"] = paired(
            table, regimes, _plain(gac, regimes), _plain(chord, regimes), seeds_below=study.SECONDARY_SEEDS
        )
    return {"regimes": regimes, "regret_seeds": shared, "arms": rows, "reported": reported}


# -- what the estimator does ---------------------------------------------------------------------------------------


def prior_gap_by_fifth(run: RunResult) -> list[float]:
    """The mean |mu - prior| over each fifth of the run's series (the
    record's means over ``series_every`` steps)."""
    gap = np.abs(np.asarray(run.mu, dtype=np.float64) - np.asarray(run.proxies["prior"], dtype=np.float64))
    return [float(np.nanmean(part)) if np.isfinite(part).any() else math.nan for part in np.array_split(gap, FIFTHS)]


def success_correlation(run: RunResult) -> float:
    """Pearson's correlation of mu with the rollouts' success rate within
    the run (over its series' blocks); NaN where either does not move."""
    mu, success = np.asarray(run.mu, dtype=np.float64), np.asarray(run.train_reward, dtype=np.float64)
    both = np.isfinite(mu) & np.isfinite(success)
    mu, success = mu[both], success[both]
    if mu.size < 3 or np.ptp(mu) == 0.0 or np.ptp(success) == 0.0:
        return math.nan
    return float(np.corrcoef(mu, success)[0, 1])


def estimator_report(table: Table, regimes: Sequence[str]) -> dict[str, Any]:
    """Per GAC arm the mean over its runs of |mu - prior| per fifth of
    training and of the correlation of mu with success; per CHORD arm the
    correlation (its mu is its schedule: it has no prior to stray from)."""

    def runs_of(method: str) -> list[RunResult]:
        return [run for r in regimes for run in table.get((r, method), {}).values()]

    def correlation(runs: Sequence[RunResult]) -> dict[str, Any]:
        values = [c for c in map(success_correlation, runs) if not math.isnan(c)]
        return {"mean": float(np.mean(values)) if values else math.nan, "runs": len(values)}

    gac = {}
    for method in (study.CANDIDATE, *study.GAC_PLANS.values()):
        runs = runs_of(method)
        if runs:
            gaps = np.array([prior_gap_by_fifth(r) for r in runs])
            fifths = [float(np.nanmean(c)) if np.isfinite(c).any() else math.nan for c in gaps.T]
            gac[method] = {"runs": len(runs), "prior_gap_by_fifth": fifths, "success_correlation": correlation(runs)}
    chord = {
        m: {"runs": len(runs_of(m)), "success_correlation": correlation(runs_of(m))}
        for m in study.PLANS.values()
        if runs_of(m)
    }
    return {"gac": gac, "chord": chord}


# -- the whole report ----------------------------------------------------------------------------------------------


def build_study_report(
    selection: study.Selection,
    pilot: Sequence[RunResult],
    main: Sequence[RunResult],
    settings: RunSettings,
    *,
    command: str,
    jobs: int = 1,
    reused: tuple[int, int] = (0, 0),
    machine: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report, a pure function of the records and the selection (and of
    where it was made: ``machine``, the instruction set that keys every
    record, else this process's)."""
    table = index(main)
    distinct = index([*pilot, *main])
    pure_rl = [r for r in pilot if r.task == study.DEV_REGIME and r.method == "pure-rl"]
    bar = bar_report(table, selection)
    return {
        "schema": SCHEMA,
        "command": command,
        "question": "does a mixing rule that needs no plan of the run choose mu as well as CHORD's schedule?",
        "candidate": study.CANDIDATE,
        "selection": _json_selection(selection),
        "regimes": regimes_report(pilot, selection),
        "bar": bar,
        "verdict": verdict_lines(bar),
        "arms": arms_report(table, selection),
        "estimator": estimator_report(table, selection.regimes),
        "cost": {
            "pilot": {"runs": len(pilot), "loaded": reused[0], "trained": len(pilot) - reused[0]},
            "main": {"runs": len(main), "loaded": reused[1], "trained": len(main) - reused[1]},
            "distinct_runs": sum(len(seeds) for seeds in distinct.values()),
            "runs_wall_s": float(sum(run.wall_s for seeds in distinct.values() for run in seeds.values())),
        },
        "machine": dict(machine) if machine else {"cpu": torch.backends.cpu.get_cpu_capability()},
        "environment": environment(settings, jobs),
        "settings": asdict(settings),
        "pure_rl": {"score": study.score(pure_rl[0]), "final_accuracy": pure_rl[0].final_accuracy} if pure_rl else None,
    }


def _json_selection(selection: study.Selection) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(selection), default=str))


def write_study_report(
    selection: study.Selection,
    pilot: Sequence[RunResult],
    main: Sequence[RunResult],
    settings: RunSettings,
    out: Path,
    *,
    command: str,
    jobs: int = 1,
    reused: tuple[int, int] = (0, 0),
    machine: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the report and write ``out/report.json``, ``out/report.md``
    and the figures; returns the report."""
    report = build_study_report(
        selection, pilot, main, settings, command=command, jobs=jobs, reused=reused, machine=machine
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(_finite_or_none(report), indent=1, allow_nan=False) + "\n")
    figures = write_study_figures(report, main, out)
    write_study_markdown(report, [p.name for p in figures], out / "report.md")
    return report
