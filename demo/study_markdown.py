"""The plan study's ``report.md``, from its report alone
(``study_report.build_study_report``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import study
from .methods import DESCRIPTIONS


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _num(value: float | None, signed: bool = False) -> str:
    if not _finite(value):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _interval(interval: dict[str, Any], signed: bool = False) -> str:
    text = _num(interval["estimate"], signed)
    if _finite(interval["low"]) and _finite(interval["high"]):
        text += f" [{_num(interval['low'], signed)}, {_num(interval['high'], signed)}]"
    return text


def _deciding(result: dict[str, Any], signed: bool = False) -> str:
    """The wider interval, and which it is (or that there is none: one seed)."""
    interval = result["interval"]
    if not (_finite(interval["low"]) and _finite(interval["high"])):
        return f"{_num(interval['estimate'], signed)} (no interval)"
    return f"{_interval(interval, signed)} ({'t' if result['used'] == 't' else 'bootstrap'})"


def _seeds(seeds: list[int]) -> str:
    if not seeds:
        return "none"
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _step(value: float | None) -> str:
    return f"{value:.0f}" if _finite(value) else "never"


def _verdict(lines: list[str]) -> list[str]:
    """The caveat (if any) as a paragraph, each comparison as an item, the outcome in bold."""
    *comparisons, outcome = lines
    caveat = [] if comparisons and comparisons[0].startswith("Condition") else comparisons[:1]
    items = [f"- {line}" for line in comparisons[len(caveat) :]]
    return [*caveat, *([""] if caveat else []), *items, "", f"**{outcome}**", ""]


def _regimes(report: dict[str, Any]) -> list[str]:
    regimes = report["regimes"]
    plans = list(study.PLANS.values())
    lines = [
        "## The regimes (the pilot)",
        "",
        f"Each CHORD plan's mean score over the pilot's seeds; the spread is the best plan's mean minus the "
        f"worst's; the step where RL starts to pay is the first where the rollouts' success rate reaches "
        f"{study.SUCCESS_STARTS} under CHORD planned for the run (median over the seeds).",
        "",
        "| regime | role | seeds | " + " | ".join(plans) + " | best plan | spread | step to success |",
        "|---|---|---|" + "---|" * len(plans) + "---|---|---|",
    ]
    for name, row in regimes["regimes"].items():
        scores = " | ".join(_num(row["plan_scores"][p]) for p in plans)
        lines.append(
            f"| {name} | {row['role']} | {_seeds(row['seeds'])} | {scores} | {row['best_plan']} "
            f"| {_num(row['spread'])} | {_step(row['success_step'])} |"
        )
    criteria = regimes["criteria"]
    ratio = criteria["success_step_ratio"]
    lines += [
        "",
        f"Test regimes: {', '.join(regimes['kept'])}"
        + (f"; dropped: {', '.join(regimes['dropped'])}." if regimes["dropped"] else "; none dropped."),
        f"The declared criteria for the test regimes: their steps to success span a factor of "
        f"{criteria['ratio_needed']:g} or more (they span {_num(ratio) if _finite(ratio) else 'an undefined factor'}: "
        f"{'met' if criteria['spans'] else 'not met'}), and at least two different best plans among them "
        f"({', '.join(criteria['best_plans'])}: {'met' if criteria['best_plans_differ'] else 'not met'}). "
        + (
            "Both are met." if criteria["met"] else "The test regimes do not meet them: the bar below is weaker for it."
        ),
        "",
        f"CHORD tuned once: `{regimes['tuned_once']['plan']}`, the plan with the best mean score on the development "
        f"regime `{regimes['development']}` (its scores there are the first row of the table).",
        "",
    ]
    return lines


def _bar(report: dict[str, Any]) -> list[str]:
    bar = report["bar"]
    lines = [
        "## The bar",
        "",
        f"`{bar['candidate']}` minus each baseline, paired by seed within each test regime ({', '.join(bar['regimes'])}) "
        "on the seeds both have, averaged over the regimes. Each comparison has two 95% intervals, the stratified "
        "percentile bootstrap and the stratified t-interval; the wider one decides.",
        "",
        "| condition | against | seeds | difference (the wider interval) | bootstrap | t-interval | lower end must "
        "exceed | holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, condition in enumerate(bar["conditions"], 1):
        for c in condition["comparisons"]:
            against = "CHORD's best plan of each regime*" if c["against"] == "best plan" else f"`{c['against']}`"
            if "interval" not in c:
                lines.append(f"| {number}. {condition['condition']} | {against} | none | n/a | | | | no |")
                continue
            lines.append(
                f"| {number}. {condition['condition']} | {against} | {_seeds(c['seeds'])} "
                f"| {_deciding(c, True)} | {_interval(c['bootstrap'], True)} "
                f"| {_interval(c['t'], True)} | {'0' if c['threshold'] == 0 else _num(c['threshold'], True)} "
                f"| {'yes' if c['holds'] else 'no'} |"
            )
    plans = ", ".join(f"{r}: `{m}`" for r, m in bar["best_plans"].items())
    lines += [
        "",
        f"\\* CHORD's best plan of each regime ({plans}) is an optimistic anchor: it was selected on the pilot's "
        "seeds and is evaluated here on seeds that include them.",
        "",
        "Per regime, the mean paired difference (a description, not a decision):",
        "",
        "| against | " + " | ".join(bar["regimes"]) + " |",
        "|---|" + "---|" * len(bar["regimes"]),
    ]
    for condition in bar["conditions"]:
        for c in condition["comparisons"]:
            if "per_regime" in c:
                label = "best plan" if c["against"] == "best plan" else f"`{c['against']}`"
                lines.append(
                    f"| {label} | " + " | ".join(_num(c["per_regime"][r], True) for r in bar["regimes"]) + " |"
                )
    return [*lines, ""]


def _arms(report: dict[str, Any]) -> list[str]:
    arms = report["arms"]
    regimes = arms["regimes"]
    lines = [
        "## Every arm",
        "",
        "Each arm's mean score over the test regimes (on the seeds it has on every one) with the wider of its two "
        "intervals, its mean per regime, and its worst regret: the largest gap, over the regimes, to the best arm "
        f"there, on the seeds every arm shares ({_seeds(arms['regret_seeds'])}). The regret is a point comparison: "
        "it decides nothing.",
        "",
        "| arm | role | seeds | mean score | " + " | ".join(regimes) + " | worst regret (regime) |",
        "|---|---|---|---|" + "---|" * len(regimes) + "---|",
    ]
    for method, row in arms["arms"].items():
        if not row["seeds"]:
            lines.append(f"| `{method}` | no runs on every test regime | | |" + " |" * len(regimes) + " |")
            continue
        per = " | ".join(_num(row["per_regime"][r]) for r in regimes)
        regret = f"{_num(row['worst_regret'])} ({row['worst_regime']})" if row["worst_regime"] else "n/a"
        lines.append(
            f"| `{method}` | {'; '.join(row['roles'])} | {_seeds(row['seeds'])} "
            f"| {_deciding(row['score'])} | {per} | {regret} |"
        )
    lines += [
        "",
        "### Reported, not part of the bar",
        "",
        f"The candidate against the paper's GAC and HPT on their common seeds, and each GAC plan against the CHORD "
        f"plan of the same multiple of the run on seeds below {study.SECONDARY_SEEDS}: how each schedule holds up "
        "when misplanned. These decide nothing about the bar.",
        "",
        "| comparison | seeds | difference (the wider interval) | bootstrap | t-interval |",
        "|---|---|---|---|---|",
    ]
    for name, c in arms["reported"].items():
        if c is None:
            lines.append(f"| {name} | none | n/a | | |")
            continue
        lines.append(
            f"| {name} | {_seeds(c['seeds'])} | {_deciding(c, True)} "
            f"| {_interval(c['bootstrap'], True)} | {_interval(c['t'], True)} |"
        )
    return [*lines, ""]


def _estimator(report: dict[str, Any]) -> list[str]:
    estimator = report["estimator"]
    lines = [
        "## What the estimator does",
        "",
        "Per GAC arm, over its runs on the test regimes: the mean |mu - prior| in each fifth of training (from the "
        "records' means over 10-step blocks), and the mean over runs of the correlation, within a run, of mu with "
        "the rollouts' success rate. CHORD's mu is its schedule: only the correlation applies.",
        "",
        "| arm | runs | " + " | ".join(f"fifth {k}" for k in range(1, 6)) + " | corr(mu, success) |",
        "|---|---|" + "---|" * 5 + "---|",
    ]
    for method, row in estimator["gac"].items():
        gaps = " | ".join(_num(g) for g in row["prior_gap_by_fifth"])
        lines.append(f"| `{method}` | {row['runs']} | {gaps} | {_num(row['success_correlation']['mean'], True)} |")
    for method, row in estimator["chord"].items():
        lines.append(
            f"| `{method}` | {row['runs']} |" + " |" * 5 + f" {_num(row['success_correlation']['mean'], True)} |"
        )
    return [*lines, ""]


def _cost(report: dict[str, Any]) -> list[str]:
    cost, env, machine = report["cost"], report["environment"], report["machine"]
    isa = f"torch CPU capability {machine.get('cpu')}" + (
        f", numba target {machine['numba_cpu']}" if machine.get("numba_cpu") else ""
    )
    pure_rl = report["pure_rl"]
    return [
        "## Cost and provenance",
        "",
        f"Command: `{report['command']}`",
        "",
        f"- Runs: the pilot {cost['pilot']['runs']} ({cost['pilot']['trained']} trained in this sitting, "
        f"{cost['pilot']['loaded']} loaded from records), the main stage {cost['main']['runs']} "
        f"({cost['main']['trained']} trained, {cost['main']['loaded']} loaded); {cost['distinct_runs']} distinct runs "
        "(the main stage's CHORD runs on the pilot's seeds are the pilot's own).",
        f"- The runs' own wall times sum to {cost['runs_wall_s'] / 3600:.2f} hours ({cost['runs_wall_s']:.0f} s) of "
        "one core.",
        f"- Machine: {env['cpu']} ({env['cpu_count']} CPUs), {env['platform']}; every record is keyed by its "
        f"instruction set ({isa}). Python {env['python']}, torch {env['torch']}, {env['torch_threads']} thread(s) "
        f"per run, {env['jobs']} run(s) at a time; git commit {env['git_commit'] or 'unknown'}.",
        "- Pure RL (`pure-rl`, mu = 0) on the development regime, seed 0: "
        + (
            f"score {_num(pure_rl['score'])} (final held-out accuracy {_num(pure_rl['final_accuracy'])})."
            if pure_rl
            else "no record."
        ),
        "",
    ]


def _limits(report: dict[str, Any]) -> list[str]:
    bar = report["bar"]
    lines = [
        "## What this decides, and what it does not",
        "",
        f"- Decided by the bar (declared before the runs): whether `{bar['candidate']}` chooses mu at least as well "
        f"as CHORD's schedule on these {len(bar['regimes'])} regimes of this small task. "
        + (
            ("It does." if bar["clears"] else "It does not.")
            if bar["complete"] and bar["computable"]
            else "Not decided yet: these runs hold fewer seeds than the study declared."
        ),
        "- Not decided: how it does on other tasks, models or run lengths; the worst regrets and the per-regime "
        "differences describe these runs and decide nothing; the comparisons with the paper's GAC, HPT and the "
        "misplanned GAC priors are reported with fewer seeds and are not part of the bar.",
        "- CHORD's best plan of each regime is optimistic: it was chosen on seeds it is then scored on.",
    ]
    if not report["regimes"]["criteria"]["met"]:
        lines.append(
            "- The test regimes do not meet the declared criteria (see the regimes above): they test fewer "
            "different moments for RL to start paying than the study wanted."
        )
    return [*lines, ""]


def write_study_markdown(report: dict[str, Any], figures: list[str], path: Path) -> None:
    settings = report["settings"]
    methods = [report["candidate"], *study.PLANS.values(), *study.GAC_PLANS.values(), study.SCHEDULE_FREE_BASELINE]
    lines = [
        "# The plan study: choosing mu without a plan",
        "",
        f"The question: {report['question']} CHORD's schedule and GAC's prior must be planned from the run's "
        f"length and from when RL starts to pay, which a user does not know in advance; `{report['candidate']}` "
        "needs neither. Every run: "
        f"{settings['steps']} steps; a run's score is its mean held-out accuracy over its last "
        f"{study.SCORE_EVALS} evaluations. The regimes, the plans, the seeds and the bar were declared before the "
        "first run (docs/research-log.md, round 3).",
        "",
        "## Verdict",
        "",
        *_verdict(report["verdict"]),
        *_regimes(report),
        *_bar(report),
        *_arms(report),
        *_estimator(report),
        *_cost(report),
        *_limits(report),
        "## Methods",
        "",
        *[f"- `{m}`: {DESCRIPTIONS[m]}" for m in methods],
        "",
        "Figures: " + ", ".join(f"`{name}`" for name in figures) + ". Each run's curves are in `runs/`.",
        "",
    ]
    path.write_text("\n".join(lines))
