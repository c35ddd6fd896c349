"""The plan study (round 3 of the research log): does a mixing rule that
needs no plan of the run choose mu as well as a schedule, where any fixed
schedule must be wrong for some runs?

Everything here was fixed before the study's first run (docs/research-log.md,
round 3): the candidate regimes, the grid of CHORD plans, the development
regime CHORD is tuned on once, the seeds, the score, and the rule that picks
the test regimes and CHORD's plans from the pilot's records. The study runs
in two stages, both by ``gaccore demo --study``:

1. **The pilot**: CHORD's schedule planned for each multiple of ``PLANS`` of
   the run, on every candidate regime (``PILOT_SEEDS``) and on the
   development regime (``DEV_SEEDS``), and one 2000-step pure-RL run.
2. **The selection** (``select``, a pure function of the pilot's records):
   CHORD tuned once (the plan best on the development regime), each
   candidate's best plan and its step where the rollouts' success rate first
   reaches 0.2 under CHORD as planned, and the test regimes (``KEEP`` of the
   candidates: ``select`` says how).
3. **The main runs** on the test regimes (``main_plan``): the primary arms
   with ``primary_seeds`` each, GAC and HPT with ``REPORTED_SEEDS``, the other
   plans with ``SECONDARY_SEEDS``.

A run's score is the mean held-out accuracy over its last ``SCORE_EVALS``
evaluations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runner import RunPlan, grid_plan, run_identity, run_plan
from .settings import RunResult, RunSettings

# The regimes the pilot measures (the test regimes are KEEP of them) and the one CHORD is tuned on.
CANDIDATES = ("perfect", "mostly-wrong", "pairs-2", "noisy-reward", "expert-decays")
DEV_REGIME = "carry-drop"
KEEP = 4
# CHORD's schedule planned for these multiples of the run, and the method of each.
PLANS = {0.25: "chord-quarter", 0.5: "chord-half", 1.0: "chord", 2.0: "chord-double", 4.0: "chord-quadruple"}
GAC_PLANS = {0.25: "gac-quarter", 0.5: "gac-half", 1.0: "gac", 2.0: "gac-double", 4.0: "gac-quadruple"}
CANDIDATE = "gac-success"  # needs no run length
SCHEDULE_FREE_BASELINE = "hpt"
MISPLANNED = (0.25, 4.0)  # the plans of the bar's third condition
PILOT_SEEDS, DEV_SEEDS = 2, 3
# The primary comparisons' pairs (seeds x test regimes) that detect 0.03 with 80% power at round 2's
# spread (0.085): 63; the test regimes share them, so 4 regimes take 16 seeds, 5 take 13.
PRIMARY_PAIRS = 63
REPORTED_SEEDS, SECONDARY_SEEDS = 5, 3
SCORE_EVALS = 5
SUCCESS_STARTS = 0.2  # the rollouts' success rate that marks "RL starts to pay"
RL_DELAY_RATIO = 3.0  # the test regimes' steps to SUCCESS_STARTS must span at least this factor


def primary_seeds(regimes: int) -> int:
    """Seeds of the primary arms on each of ``regimes`` test regimes: ``PRIMARY_PAIRS`` in all, at least."""
    return math.ceil(PRIMARY_PAIRS / regimes)


def score(run: RunResult) -> float:
    """Mean held-out accuracy over the run's last ``SCORE_EVALS`` evaluations."""
    return float(np.mean(run.accuracy[-SCORE_EVALS:]))


def success_step(run: RunResult) -> float:
    """The first step where the rollouts' success rate (a mean over the
    record's ``series_every`` steps) reaches ``SUCCESS_STARTS``; inf if never."""
    for block, rate in enumerate(run.train_reward):
        if rate >= SUCCESS_STARTS:
            return float((block + 1) * run.series_every)
    return float("inf")


def pilot_plan() -> list[RunPlan]:
    """The pilot: every CHORD plan on the development regime and on each candidate, and one pure-RL run."""
    plan = grid_plan([DEV_REGIME], list(PLANS.values()), range(DEV_SEEDS))
    plan += grid_plan(list(CANDIDATES), list(PLANS.values()), range(PILOT_SEEDS))
    return [*plan, (DEV_REGIME, "pure-rl", 0)]


@dataclass(frozen=True)
class Selection:
    """What the pilot decided, by the declared rule."""

    tuned_plan: float  # CHORD tuned once: the plan best on the development regime
    plan_scores: dict[str, dict[float, float]]  # regime -> plan -> mean score over the pilot's seeds
    best_plan: dict[str, float]  # candidate -> its best plan (the optimistic anchor)
    success_steps: dict[str, float]  # candidate -> median step to SUCCESS_STARTS under CHORD as planned
    regimes: tuple[str, ...]  # the test regimes
    dropped: tuple[str, ...]
    criteria_met: bool  # the kept regimes' delays span RL_DELAY_RATIO and their best plans differ


def select(runs: Sequence[RunResult]) -> Selection:
    """The declared rule, on the pilot's records.

    CHORD tuned once is the plan with the best mean score on the development
    regime. For each candidate: its best plan, its spread (best minus worst
    plan's mean score) and its step to ``SUCCESS_STARTS`` under CHORD planned
    for the run. The test regimes are ``KEEP`` candidates: the one with the
    smallest spread is dropped (a regime where every plan ties cannot
    decide), unless the rest would then fail a criterion (their steps to
    ``SUCCESS_STARTS`` spanning ``RL_DELAY_RATIO``, and at least two
    different best plans among them); then the next smallest, and so on. If
    no candidate can be dropped, all are kept and ``criteria_met`` says
    whether they meet the criteria.
    """
    by: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        by.setdefault((run.task, run.method), []).append(run)

    def mean_score(regime: str, method: str) -> float:
        found = by.get((regime, method))
        if not found:
            raise ValueError(f"the pilot has no run of {method} on {regime}")
        return float(np.mean([score(r) for r in found]))

    plan_scores = {regime: {k: mean_score(regime, m) for k, m in PLANS.items()} for regime in (DEV_REGIME, *CANDIDATES)}
    tuned = max(PLANS, key=lambda k: plan_scores[DEV_REGIME][k])
    best = {regime: max(PLANS, key=lambda k: plan_scores[regime][k]) for regime in CANDIDATES}
    steps = {regime: float(np.median([success_step(r) for r in by[(regime, PLANS[1.0])]])) for regime in CANDIDATES}
    spread = {regime: max(plan_scores[regime].values()) - min(plan_scores[regime].values()) for regime in CANDIDATES}

    def meets(regimes: Sequence[str]) -> bool:
        delays = [steps[r] for r in regimes]
        spans = min(delays) > 0 and max(delays) / min(delays) >= RL_DELAY_RATIO
        return spans and len({best[r] for r in regimes}) >= 2

    kept, dropped = list(CANDIDATES), []
    for regime in sorted(CANDIDATES, key=lambda r: spread[r]):
        if len(kept) == KEEP:
            break
        rest = [r for r in kept if r != regime]
        if meets(rest):
            kept, dropped = rest, [*dropped, regime]
    return Selection(tuned, plan_scores, best, steps, tuple(kept), tuple(dropped), meets(kept))


def main_plan(selection: Selection) -> list[RunPlan]:
    """The main runs on the test regimes, seed by seed (an interrupted study
    holds whole seeds): the primary arms (the candidate, CHORD tuned once,
    CHORD misplanned by ``MISPLANNED`` and each regime's best plan) on
    ``primary_seeds(regimes)``, paper GAC and HPT on ``REPORTED_SEEDS``, every other
    plan of CHORD and of GAC's prior on ``SECONDARY_SEEDS``."""
    plan: list[RunPlan] = []
    for seed in range(primary_seeds(len(selection.regimes))):
        for regime in selection.regimes:
            primary = [CANDIDATE, PLANS[selection.tuned_plan], *(PLANS[k] for k in MISPLANNED)]
            primary.append(PLANS[selection.best_plan[regime]])
            methods = list(dict.fromkeys(primary))
            if seed < REPORTED_SEEDS:
                methods += [GAC_PLANS[1.0], SCHEDULE_FREE_BASELINE]
            if seed < SECONDARY_SEEDS:
                methods += [m for m in (*PLANS.values(), *GAC_PLANS.values()) if m not in methods]
            plan += [(regime, method, seed) for method in dict.fromkeys(methods)]
    return plan


def run_study(
    settings: RunSettings,
    out: Path,
    *,
    jobs: int,
    reuse: bool,
    show_progress: bool,
    command: str = "gaccore demo --study",
) -> tuple[Selection, list[RunResult], list[RunResult], dict[str, Any]]:
    """The pilot, the selection (written to ``out/selection.json``), the
    main runs, every record in ``out/runs/``, and the report
    (``out/report.md``, ``out/report.json``, figures: ``study_report``);
    returns the selection, the pilot's and the main stage's runs, and the
    report. With ``reuse`` and every record present it trains nothing and
    rebuilds the report."""
    from .study_report import write_study_report  # it reads this module's declarations

    options = {"jobs": jobs, "reuse": reuse, "show_progress": show_progress}
    pilot, pilot_reused = run_plan(pilot_plan(), settings, out, **options)
    selection = select(pilot)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(asdict(selection), indent=1, default=str) + "\n")
    main, main_reused = run_plan(main_plan(selection), settings, out, **options)
    # The instruction set every record is keyed by (a record made on another was retrained, not loaded).
    identity = run_identity(DEV_REGIME, CANDIDATE, 0, settings)
    machine = {name: identity.get(name) for name in ("cpu", "numba", "numba_cpu")}
    report = write_study_report(
        selection,
        pilot,
        main,
        settings,
        out,
        command=command,
        jobs=jobs,
        reused=(pilot_reused, main_reused),
        machine=machine,
    )
    return selection, pilot, main, report
